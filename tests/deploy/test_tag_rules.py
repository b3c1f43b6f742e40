"""The rules every state store applies to tags: weights are whole percentages that add up to at most
100 (100 itself allowed), and the history names each move the way the user made it."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

from kitaru import KitaruClient
from kitaru._engine.runtime import Runtime
from kitaru.errors import KitaruUsageError

Project = Callable[..., ModuleType]


def test_weights_are_whole_percentages_up_to_100_in_total(runtime: Runtime, project: Project) -> None:
    agent = project("v1")
    agent.review.deploy()
    client = KitaruClient(runtime)
    with pytest.raises(KitaruUsageError, match="0 to 100"):
        client.deployments.tag("review", "canary", 1, weight=True)  # a bool is not a percentage
    assert client.deployments.tag("review", "canary", 1, weight=100).weight == 100
    client.deployments.tag("review", "canary", 1, weight=60)
    with pytest.raises(KitaruUsageError, match="add up to 101%, over 100%"):
        client.deployments.tag("review", "beta", 1, weight=41)
    assert client.deployments.tag("review", "beta", 1, weight=40).weight == 40
    assert {(t.tag, t.weight) for t in client.deployments.tags("review")} == {
        ("default", None),
        ("canary", 60),
        ("beta", 40),
    }


def test_the_history_names_each_move(runtime: Runtime, project: Project) -> None:
    agent = project("v1")
    agent.review.deploy()
    project("v2")
    agent.review.deploy(tag="canary", weight=10)
    client = KitaruClient(runtime)
    client.deployments.tag("review", "beta", 2)
    client.deployments.untag("review", "beta")
    client.deployments.promote("review", "canary")
    client.deployments.rollback("review")
    moves = [(m.tag, m.action, m.version, m.previous, m.weight) for m in client.deployments.history("review")]
    assert moves == [
        ("default", "deploy", 1, None, None),
        ("canary", "deploy", 2, None, 10),
        ("beta", "tag", 2, None, None),
        ("beta", "untag", None, 2, None),
        ("default", "promote", 2, 1, None),
        ("default", "rollback", 1, 2, None),
    ]
