"""Secrets: stored encrypted, read by flows with kitaru.secret(), never written in clear anywhere
kitaru keeps records (journal, artifacts, logs, the home), and clear errors for a missing or
wrong key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import kitaru
from kitaru.cli import main
from kitaru.errors import KitaruConfigError, KitaruNotFoundError, KitaruUsageError
from kitaru.secrets import KEY_ENV, delete_secret, get_secret, list_secrets, new_key, set_secret

VALUE = "sk-live-7f3a9c1e-THE-SECRET-VALUE"


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    k = new_key()
    monkeypatch.setenv(KEY_ENV, k)
    return k


def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


class TestPython:
    def test_round_trip(self, key: str) -> None:
        set_secret("api_token", VALUE)
        assert get_secret("api_token") == VALUE
        assert [s.name for s in list_secrets()] == ["api_token"]
        set_secret("api_token", "other-value")
        assert get_secret("api_token") == "other-value"
        delete_secret("api_token")
        assert list_secrets() == []
        with pytest.raises(KitaruNotFoundError, match="kitaru secrets set api_token"):
            get_secret("api_token")
        with pytest.raises(KitaruNotFoundError):
            delete_secret("api_token")

    def test_the_store_holds_ciphertext_bound_to_the_name(self, key: str) -> None:
        set_secret("a", VALUE)
        state = kitaru.KitaruClient()._runtime.state
        stored = state.get_secret("a")
        assert stored is not None and VALUE.encode() not in stored.ciphertext
        # A ciphertext moved onto another name does not open: the name is authenticated.
        state.put_secret("b", stored.ciphertext)
        with pytest.raises(KitaruConfigError, match="cannot be decrypted"):
            get_secret("b")

    def test_a_missing_key_says_how_to_make_one(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(KEY_ENV, raising=False)
        with pytest.raises(KitaruConfigError, match=r"KITARU_SECRETS_KEY is not set.*kitaru secrets new-key"):
            set_secret("a", VALUE)

    def test_a_malformed_key_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(KEY_ENV, "not-a-key")
        with pytest.raises(KitaruConfigError, match="not a valid key"):
            set_secret("a", VALUE)

    def test_a_wrong_key_is_named(self, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
        set_secret("a", VALUE)
        monkeypatch.setenv(KEY_ENV, new_key())
        with pytest.raises(KitaruConfigError, match="stored with another key"):
            get_secret("a")
        # Listing needs no key.
        assert [s.name for s in list_secrets()] == ["a"]

    def test_bad_names_are_refused(self, key: str) -> None:
        for bad in ("", "a b", "../x", "x" * 200):
            with pytest.raises(KitaruUsageError):
                set_secret(bad, VALUE)


class TestCLI:
    def test_set_get_list_delete(self, key: str) -> None:
        code, out, err = run("secrets", "set", "token", input=VALUE + "\n")
        assert code == 0, err
        code, out, _ = run("secrets", "get", "token")
        assert code == 0 and VALUE not in out and "****" in out
        code, out, _ = run("secrets", "get", "token", "--reveal")
        assert code == 0 and out.strip() == VALUE
        code, out, _ = run("secrets", "list", "-o", "json")
        assert code == 0 and '"token"' in out and VALUE not in out
        code, out, _ = run("secrets", "delete", "token")
        assert code == 0
        code, _, err = run("secrets", "get", "token")
        assert code == KitaruNotFoundError.exit_code and "no secret 'token'" in err

    def test_0_18s_key_value_form_stores_a_json_object(self, key: str) -> None:
        # `kitaru secrets set openai-creds --OPENAI_API_KEY=sk-...`, as 0.18 documented it.
        code, out, err = run("secrets", "set", "openai-creds", "--OPENAI_API_KEY=sk-1", "--ORG", "o=2")
        assert code == 0, err
        assert "OPENAI_API_KEY" in out and "sk-1" not in out
        code, out, _ = run("secrets", "get", "openai-creds", "--reveal")
        assert json.loads(out) == {"OPENAI_API_KEY": "sk-1", "ORG": "o=2"}
        # What reads a secret key by key (model aliases, secret_environment_from) gets the key.
        from kitaru.secrets import get_secret

        assert json.loads(get_secret("openai-creds"))["OPENAI_API_KEY"] == "sk-1"
        for bad, says in (
            (["--value", "x", "--A=1"], "not both"),
            (["--A"], "has no value"),
            (["--A=1", "--A=2"], "given twice"),
            (["stray"], "--KEY=VALUE"),
        ):
            code, _, err = run("secrets", "set", "other", *bad)
            assert code == 2 and says in err, err

    def test_a_missing_key_exits_with_the_config_code(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(KEY_ENV, raising=False)
        code, _, err = run("secrets", "set", "token", "--value", VALUE)
        assert code == KitaruConfigError.exit_code and "kitaru secrets new-key" in err

    def test_new_key_is_usable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        code, out, _ = run("secrets", "new-key")
        assert code == 0
        monkeypatch.setenv(KEY_ENV, out.strip())
        set_secret("a", VALUE)
        assert get_secret("a") == VALUE


FLOW = textwrap.dedent(
    """
    import logging
    import kitaru

    @kitaru.checkpoint
    def call_api(n: int) -> int:
        token = kitaru.secret("api_token")
        print("calling with", token)
        logging.getLogger("agent").warning("token=%s", token)
        kitaru.log(auth=token, size=len(token))
        return len(token) + n

    @kitaru.flow
    def uses_secret() -> int:
        token = kitaru.secret("api_token")
        print("flow body sees", token)
        size = call_api(1)
        if kitaru.wait(name="go", schema=bool):
            return size
        return 0

    if __name__ == "__main__":
        import sys
        handle = uses_secret.run()
        print("EXEC", handle.exec_id)
    """
)


def test_a_secret_used_by_a_flow_is_nowhere_in_clear(tmp_path: Path, kitaru_home: Path, key: str) -> None:
    """Set by the CLI in one process, read by a flow in another (printed, logged, kitaru.log'ed),
    answered and finished from a third: the value is in no journal record, artifact, log entry,
    CLI output, nor any file under the home."""
    env = {**os.environ, "KITARU_HOME": str(kitaru_home), KEY_ENV: key, "PYTHONPATH": str(tmp_path)}
    cli = [sys.executable, "-m", "kitaru.cli"]
    done = subprocess.run(
        [*cli, "secrets", "set", "api_token"],
        input=VALUE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (tmp_path / "secret_flow.py").write_text(FLOW)
    ran = subprocess.run(
        [sys.executable, "secret_flow.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    assert VALUE in ran.stdout  # the flow really had the value (its own terminal shows it)
    exec_id = ran.stdout.split("EXEC", 1)[1].split()[0]
    answered = subprocess.run(
        [*cli, "executions", "input", exec_id, "--value", "true"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answered.returncode == 0, answered.stderr

    client = kitaru.KitaruClient()
    execution = client.executions.get(exec_id)
    assert execution.status == "completed"
    assert client.artifacts.get(execution.result_artifact or "").load() == len(VALUE) + 1
    journal = client._runtime.state.read_journal(exec_id)
    assert not [r for r in journal if VALUE in repr(r)]
    for artifact in client.artifacts.list(exec_id):
        assert VALUE not in repr(artifact.load())
    logs = client.executions.logs(exec_id)
    assert any("***" in e.text for e in logs) and not [e for e in logs if VALUE in e.text]
    for command in (["executions", "get", exec_id, "-o", "json"], ["executions", "logs", exec_id]):
        shown = subprocess.run([*cli, *command], env=env, capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert VALUE not in shown.stdout + shown.stderr
    client._runtime.close()
    for path in kitaru_home.rglob("*"):
        if path.is_file():
            assert VALUE.encode() not in path.read_bytes(), path
