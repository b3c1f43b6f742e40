"""An execution's options (``cache``, ``retries``, ``image``): each set where 0.18 set them, with
its precedence (run > @flow > configure > KITARU_* > [tool.kitaru] > default), recorded with the
execution, and each doing what it says."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import kitaru
from kitaru._engine.runtime import OPTIONS_METADATA
from kitaru.errors import KitaruConfigError, KitaruUsageError

RUNS: list[str] = []


@kitaru.checkpoint
def step(x: int) -> int:
    RUNS.append("step")
    return x + 1


@kitaru.checkpoint
def flaky(x: int) -> int:
    RUNS.append("flaky")
    if RUNS.count("flaky") < 3:
        raise RuntimeError("not yet")
    return x * 10


@kitaru.flow
def plain(x: int) -> int:
    return flaky(step(x))


@kitaru.flow(retries=1, cache=False, image="registry.example/flow:1")
def decorated(x: int) -> int:
    return step(x)


def _options(exec_id: str) -> dict:
    record = kitaru.KitaruClient()._runtime.state.get_execution(exec_id)
    assert record is not None
    return record.metadata[OPTIONS_METADATA]


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    RUNS.clear()
    for name in ("KITARU_CACHE", "KITARU_RETRIES", "KITARU_IMAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no pyproject.toml above, unless a test writes one


class TestRetries:
    def test_run_retries_rerun_the_execution_from_its_journal(self) -> None:
        handle = plain.run(1, retries=2)
        assert handle.wait(timeout=60) == 20
        # `step` completed once and was replayed on each retry; `flaky` ran until it passed.
        assert RUNS.count("step") == 1 and RUNS.count("flaky") == 3
        assert _options(handle.exec_id)["retries"] == 2
        assert _options(handle.exec_id)["sources"]["retries"] == "run"

    def test_without_retries_the_execution_fails(self) -> None:
        with pytest.raises(kitaru.KitaruExecutionError):
            plain.run(1).wait(timeout=60)

    def test_configure_retries_is_below_the_decorator_and_the_run(self) -> None:
        kitaru.configure(retries=5)
        assert _options(plain.run(1).exec_id)["retries"] == 5
        assert _options(decorated.run(1).exec_id)["retries"] == 1
        assert _options(decorated.run(1, retries=0).exec_id)["retries"] == 0

    def test_env_and_pyproject_are_below_configure(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        (tmp_path / "pyproject.toml").write_text("[tool.kitaru]\nretries = 4\ncache = true\n")
        options = plain.options({})
        assert (options.retries, options.cache) == (4, True)
        assert options.sources["retries"].startswith("pyproject")
        monkeypatch.setenv("KITARU_RETRIES", "3")
        assert plain.options({}).retries == 3
        kitaru.configure(retries=2)
        assert plain.options({}).retries == 2

    def test_bad_values_are_refused_where_they_are_given(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        with pytest.raises(KitaruUsageError):
            plain.run(1, retries=-1)
        with pytest.raises(KitaruUsageError):
            kitaru.configure(retries="2")
        monkeypatch.setenv("KITARU_RETRIES", "many")
        with pytest.raises(KitaruConfigError, match="KITARU_RETRIES"):
            plain.run(1)
        monkeypatch.delenv("KITARU_RETRIES")
        (tmp_path / "pyproject.toml").write_text('[tool.kitaru]\nstack = "prod"\n')
        with pytest.raises(KitaruConfigError, match="stack"):
            plain.run(1)


class TestCache:
    def test_run_cache_reuses_an_earlier_executions_output(self) -> None:
        assert decorated.run(1, cache=True).wait(timeout=60) == 2
        assert decorated.run(1, cache=True).wait(timeout=60) == 2
        assert RUNS.count("step") == 1
        assert decorated.run(1).wait(timeout=60) == 2  # the decorator's cache=False
        assert RUNS.count("step") == 2

    def test_env_cache_turns_it_on(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KITARU_CACHE", "true")
        plain_twice = [plain.run(1, retries=2).wait(timeout=60) for _ in range(2)]
        assert plain_twice == [20, 20] and RUNS.count("step") == 1


class TestImage:
    def test_image_forms_and_merging_down_the_chain(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KITARU_IMAGE", '{"environment": {"A": "env", "B": "env"}}')
        kitaru.configure(image={"requirements": ["httpx"]})
        options = decorated.options(
            {"image": kitaru.ImageSettings(environment={"B": "run"}, secret_environment_from=["keys"])}
        )
        assert options.image == kitaru.ImageSettings(
            base_image="registry.example/flow:1",
            requirements=["httpx"],
            environment={"A": "env", "B": "run"},
            secret_environment_from=["keys"],
        )
        handle = decorated.run(1, image="registry.example/run:2")
        record = kitaru.KitaruClient()._runtime.state.get_execution(handle.exec_id)
        assert record is not None and record.metadata["image"] == "registry.example/run:2"
        assert record.metadata[OPTIONS_METADATA]["image"]["requirements"] == ["httpx"]

    def test_bad_image_settings_are_refused(self) -> None:
        with pytest.raises(KitaruUsageError, match="unknown image setting"):
            kitaru.configure(image={"base": "x"})
        with pytest.raises(KitaruUsageError):
            kitaru.ImageSettings(requirements="httpx")  # type: ignore[arg-type]
        with pytest.raises(KitaruUsageError):
            plain.run(1, image="")

    def test_image_builds_are_refused_on_a_remote_submission(self) -> None:
        from kitaru.config import refuse_image_builds

        with pytest.raises(KitaruUsageError, match=r"apt_packages.*does not build images"):
            refuse_image_builds(kitaru.ImageSettings(apt_packages=["git"]), "f")
        refuse_image_builds(kitaru.ImageSettings(base_image="x", requirements=["y"]), "f")

    def test_the_worker_exports_environment_and_secrets_and_checks_requirements(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from kitaru import secrets
        from kitaru.store import ExecutionRecord
        from kitaru.worker import _apply_image_settings

        monkeypatch.setenv(secrets.KEY_ENV, secrets.new_key())
        secrets.set_secret("openai-creds", '{"OPENAI_API_KEY": "sk-test"}')
        secrets.set_secret("TOKEN", "t0ken")
        for name in ("LOG_LEVEL", "OPENAI_API_KEY", "TOKEN"):
            monkeypatch.delenv(name, raising=False)
        image = kitaru.ImageSettings(
            environment={"LOG_LEVEL": "DEBUG"},
            secret_environment_from=["openai-creds", "TOKEN"],
            requirements=["pytest", "anyio>=1"],
        )
        record = ExecutionRecord(
            "e1", "f", "m:f", None, "running", 0, 0, metadata={OPTIONS_METADATA: {"image": image.to_dict()}}
        )
        try:
            _apply_image_settings(record)
            assert os.environ["LOG_LEVEL"] == "DEBUG"
            assert os.environ["OPENAI_API_KEY"] == "sk-test" and os.environ["TOKEN"] == "t0ken"
            record.metadata[OPTIONS_METADATA]["image"]["requirements"] = ["no-such-package-kitaru", "anyio<1"]
            with pytest.raises(KitaruConfigError, match=r"no-such-package-kitaru.*anyio<1"):
                _apply_image_settings(record)
        finally:
            for name in ("LOG_LEVEL", "OPENAI_API_KEY", "TOKEN"):
                os.environ.pop(name, None)


class TestConfigure:
    def test_returns_what_is_set_readable_as_attributes(self) -> None:
        configured = kitaru.configure(cache=True, retries=2)
        assert configured.cache is True and configured.retries == 2 and configured["retries"] == 2
        assert configured.image is None

    def test_project_is_refused_with_what_to_do(self) -> None:
        with pytest.raises(KitaruUsageError, match="no projects"):
            kitaru.configure(project="my-project")


class TestCheckpointOptions:
    def test_type_labels_the_call_and_its_artifact(self) -> None:
        @kitaru.checkpoint(type="llm_call")
        def ask(q: str) -> str:
            return q.upper()

        @kitaru.flow
        def asking(q: str) -> str:
            return ask(q)

        handle = asking.run("hi")
        assert handle.wait(timeout=60) == "HI"
        execution = kitaru.KitaruClient().executions.get(handle.exec_id)
        (call,) = execution.checkpoints
        assert call.type == "llm_call"
        artifact = kitaru.KitaruClient()._runtime.state.get_artifact(call.output_artifact or "")
        assert artifact is not None and artifact.tags == ["llm_call"]

    def test_runtime_is_inline_or_isolated(self) -> None:
        assert kitaru.checkpoint(runtime="ISOLATED")(lambda: 1).runtime == "isolated"
        assert kitaru.checkpoint(lambda: 1).runtime == "inline"
        with pytest.raises(KitaruUsageError, match="unsupported runtime"):
            kitaru.checkpoint(runtime="gpu")(lambda: 1)


def test_an_edited_pyproject_is_read_again_by_the_next_run(tmp_path: Path) -> None:
    """The parsed ``[tool.kitaru]`` table is kept between runs (parsing it dominated an empty
    flow's start), but an edit, even one of the same size, is seen by the next run."""
    from kitaru.config import resolve_options

    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[tool.kitaru]\nretries = 4\n")
    assert resolve_options({}, {}).retries == 4
    pyproject.write_text("[tool.kitaru]\nretries = 5\n")
    assert resolve_options({}, {}).retries == 5
