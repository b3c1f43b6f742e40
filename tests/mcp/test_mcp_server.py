"""`kitaru mcp`: the real stdio server process, driven by the MCP SDK's client as an agent tool
would drive it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from kitaru._install import install_hint_pattern

pytestmark = pytest.mark.e2e

FLOWS = Path(__file__).parent / "flows"
TIMEOUT = 120


def _start_review(project: Path, env: dict[str, str]) -> str:
    shutil.copy(FLOWS / "review.py", project)
    started = subprocess.run(
        [sys.executable, "review.py"], cwd=project, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert started.returncode == 0, started.stderr
    exec_id, status = started.stdout.split()
    assert status == "waiting"
    return exec_id


def _session(kitaru_cli: list[str], env: dict[str, str], cwd: Path, *extra: str) -> Any:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    return Client(
        StdioServerParameters(
            command=kitaru_cli[0], args=[*kitaru_cli[1:], "mcp", *extra], env=env, cwd=str(cwd)
        )
    )


def _data(result: Any) -> Any:
    assert not result.is_error, result.content
    return json.loads(result.content[0].text)


def _error(result: Any) -> str:
    assert result.is_error, result.content
    return str(result.content[0].text)


def test_every_tool_over_stdio_and_answers_checked_like_the_cli(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str]
) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    unpickled = tmp_path / "unpickled"
    env = {**subprocess_env, "KITARU_TEST_UNPICKLED": str(unpickled)}
    exec_id = _start_review(project, env)

    async def scenario() -> None:
        with anyio.fail_after(TIMEOUT):
            async with _session(kitaru_cli, env, elsewhere) as client:
                tools = {t.name: t for t in (await client.list_tools()).tools}
                assert set(tools) == {
                    "list_executions",
                    "get_execution",
                    "pending_waits",
                    "answer_wait",
                    "replay_execution",
                    "list_artifacts",
                    "artifact_preview",
                }
                assert tools["get_execution"].annotations.read_only_hint is True
                assert tools["answer_wait"].annotations.read_only_hint is False

                listed = _data(await client.call_tool("list_executions", {"status": "waiting"}))
                assert [e["id"] for e in listed["executions"]] == [exec_id]

                # A prefix of the id is enough, as on the command line.
                got = _data(await client.call_tool("get_execution", {"exec_id": exec_id[:8]}))
                execution = got["execution"]
                assert execution["status"] == "waiting"
                assert [c["call_id"] for c in execution["checkpoints"]] == ["draft", "opaque"]

                [pending] = _data(await client.call_tool("pending_waits", {}))["waits"]
                assert pending["exec_id"] == exec_id and pending["name"] == "verdict"
                assert pending["question"] == "Publish this draft?"
                assert set(pending["schema"]["required"]) == {"approve", "note"}

                artifacts = _data(await client.call_tool("list_artifacts", {"exec_id": exec_id}))
                by_call = {a["call_id"]: a for a in artifacts["artifacts"] if a["type"] == "output"}
                shown = _data(
                    await client.call_tool("artifact_preview", {"artifact_id": by_call["draft"]["id"]})
                )
                assert shown["view"] == "json"
                assert shown["value"] == {"topic": "tea", "text": "a draft about tea"}
                hidden = _data(
                    await client.call_tool("artifact_preview", {"artifact_id": by_call["opaque"]["id"]})
                )
                assert hidden["view"] == "none" and hidden["value"] is None
                assert hidden["serializer"] == "cloudpickle" and "--load" in hidden["hint"]
                assert not unpickled.exists()  # described from its record, never loaded

                # A bad answer: refused with the reason, and the wait stays open.
                refused = _error(
                    await client.call_tool("answer_wait", {"exec_id": exec_id, "value": {"approve": "yes"}})
                )
                assert "'note' is a required property" in refused, refused
                assert "still open" in refused, refused
                [still] = _data(await client.call_tool("pending_waits", {}))["waits"]
                assert still["exec_id"] == exec_id and still["name"] == "verdict"

                missing = _error(await client.call_tool("get_execution", {"exec_id": "nope"}))
                assert "no execution 'nope'" in missing, missing

                # A good answer resumes the flow to its end.
                answered = _data(
                    await client.call_tool(
                        "answer_wait",
                        {"exec_id": exec_id, "value": {"approve": True, "note": "fine"}},
                    )
                )
                assert answered["execution"]["status"] == "completed", answered
                assert _data(await client.call_tool("pending_waits", {}))["waits"] == []
                done = _data(await client.call_tool("get_execution", {"exec_id": exec_id}))["execution"]
                result = _data(
                    await client.call_tool("artifact_preview", {"artifact_id": done["result_artifact"]})
                )
                assert result["value"] == "tea: published (fine)"

                # Replay from the wait with another draft: a new execution that waits again.
                replayed = _data(
                    await client.call_tool(
                        "replay_execution",
                        {
                            "exec_id": exec_id,
                            "from_step": "verdict",
                            "overrides": {"draft": {"topic": "coffee", "text": "another"}},
                        },
                    )
                )
                new = replayed["execution"]
                assert replayed["replayed_from"] == exec_id
                assert new["id"] != exec_id and new["original_exec_id"] == exec_id
                assert new["status"] == "waiting", new
                again = _data(
                    await client.call_tool(
                        "answer_wait",
                        {
                            "exec_id": new["id"],
                            "wait": "verdict",
                            "value": {"approve": False, "note": "later"},
                        },
                    )
                )["execution"]
                assert again["status"] == "completed", again
                value = _data(
                    await client.call_tool("artifact_preview", {"artifact_id": again["result_artifact"]})
                )
                assert value["value"] == "coffee: dropped (later)"

    anyio.run(scenario)


def test_read_only_offers_only_the_tools_that_look(
    tmp_path: Path, subprocess_env: dict[str, str], kitaru_cli: list[str]
) -> None:
    async def scenario() -> set[str]:
        with anyio.fail_after(TIMEOUT):
            async with _session(kitaru_cli, subprocess_env, tmp_path, "--read-only") as client:
                return {t.name for t in (await client.list_tools()).tools}

    assert anyio.run(scenario) == {
        "list_executions",
        "get_execution",
        "pending_waits",
        "list_artifacts",
        "artifact_preview",
    }


def test_without_the_sdk_the_command_names_the_extra(subprocess_env: dict[str, str]) -> None:
    # `None` in sys.modules makes `import mcp` fail as it does where the extra is not installed.
    code = "import sys; sys.modules['mcp'] = None; from kitaru.cli import main; main(['mcp'])"
    ran = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert ran.returncode != 0
    assert "the MCP SDK" in ran.stderr, ran.stderr
    assert re.search(install_hint_pattern("mcp"), ran.stderr), ran.stderr
    assert "Traceback" not in ran.stderr
