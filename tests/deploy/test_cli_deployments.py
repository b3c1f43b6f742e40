"""``kitaru deployments``: every subcommand in text and JSON, and bad input that changes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import ModuleType

from click.testing import CliRunner

from kitaru.cli import main

Project = Callable[..., ModuleType]


def _cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, (args, result.output, result.exception)
    return result.output


def test_list_show_tag_promote_untag_history(project: Project) -> None:
    agent = project("v1")
    agent.review.deploy(message="first")
    project("v2")
    agent.review.deploy(image="img:2")

    listed = json.loads(_cli("deployments", "list", "review", "-o", "json"))
    assert [(v["version"], v["tags"]) for v in listed["versions"]] == [(1, ["default"]), (2, [])]
    assert "first" in _cli("deployments", "list")

    moved = json.loads(_cli("deployments", "tag", "review", "canary", "2", "--weight", "10", "-o", "json"))
    assert (moved["tag"], moved["version"], moved["weight"], moved["action"]) == ("canary", 2, 10, "tag")
    assert "canary (10%)" in _cli("deployments", "list", "review")
    shown = json.loads(_cli("deployments", "show", "review@canary", "-o", "json"))
    assert (shown["version"], shown["image"]) == (2, "img:2")
    assert "version    1" in _cli("deployments", "show", "review")
    assert json.loads(_cli("deployments", "show", "review:1", "-o", "json"))["message"] == "first"

    assert "review@default -> version 2 (was 1)" in _cli("deployments", "promote", "review", "canary")
    assert "removed" in _cli("deployments", "untag", "review", "canary")
    back = json.loads(_cli("deployments", "rollback", "review", "--to", "1", "-o", "json"))
    assert (back["version"], back["previous"]) == (1, 2)
    history = json.loads(_cli("deployments", "history", "review", "-o", "json"))
    assert [(m["tag"], m["version"], m["action"]) for m in history] == [
        ("default", 1, "deploy"),
        ("canary", 2, "tag"),
        ("default", 2, "promote"),
        ("canary", None, "untag"),
        ("default", 1, "rollback"),
    ]
    assert "rollback" in _cli("deployments", "history", "review", "default")

    invoked = _cli("deployments", "invoke", "review", "--args", '{"topic": "t"}')
    assert "is completed" in invoked and "version 1 of review" in invoked and "v1(t)" in invoked


def test_bad_input_is_refused_and_changes_nothing(project: Project) -> None:
    agent = project("v1")
    agent.review.deploy()
    before = _cli("deployments", "history", "review", "-o", "json")
    assert "has no version 7" in _cli("deployments", "tag", "review", "canary", "7", code=5)
    assert "0 to 100" in _cli("deployments", "tag", "review", "canary", "1", "--weight", "101", code=2)
    assert "no tag 'canary'" in _cli("deployments", "promote", "review", "canary", code=5)
    assert "nothing to roll back to" in _cli("deployments", "rollback", "review", code=6)
    assert "no tag 'beta'" in _cli("deployments", "invoke", "review@beta", "--args", "{}", code=5)
    assert "no deployed versions" in _cli("deployments", "invoke", "nobody", "--args", "{}", code=5)
    assert "no deployed versions" in _cli("deployments", "history", "nobody", code=5)
    assert "JSON object" in _cli("deployments", "invoke", "review", "--args", "[1]", code=2)
    assert _cli("deployments", "history", "review", "-o", "json") == before
    assert json.loads(_cli("executions", "list", "-o", "json")) == []
