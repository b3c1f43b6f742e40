"""flow.deploy() and flow.invoke() in one process, on every state store: frozen numbered versions,
the deployed code (not the working tree's) running, pinned executions, tags and bad input."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

from kitaru import KitaruClient
from kitaru._engine.flow import Flow
from kitaru._engine.runtime import Runtime
from kitaru.deployments import route
from kitaru.errors import KitaruNotFoundError, KitaruUsageError

Project = Callable[..., ModuleType]


def _store_blobs(runtime: Runtime) -> list[str]:
    return list(runtime.artifacts.list("code/"))


def test_versions_are_numbered_and_the_first_is_default(runtime: Runtime, project: Project) -> None:
    agent = project("v1")
    first = agent.review.deploy(message="first")
    second = agent.review.deploy(image="registry.example/agent:2")
    assert (first.version, first.tags, first.message) == (1, ("default",), "first")
    assert (second.version, second.tags, second.image) == (2, (), "registry.example/agent:2")
    assert first.flow == "review" and first.target == f"{agent.__name__}:review"
    # Identical code: one archive, uploaded once, shared by both versions.
    assert first.archive_key == second.archive_key
    assert _store_blobs(runtime) == [first.archive_key]
    assert first.created_by and first.stack == runtime.stack_name
    assert first.requirements["python"]


def test_invoke_runs_the_deployed_code_not_this_process(runtime: Runtime, project: Project) -> None:
    agent = project("v0")  # what this process imported and keeps
    project("v1")
    agent.review.deploy()
    project("v2")  # the file changes; this process still holds v1's code
    v2 = agent.review.deploy(tag="next")
    assert v2.version == 2 and v2.tags == ("next",)
    client = KitaruClient(runtime)

    assert agent.review.invoke("t").wait() == "v1(t)"
    handle = agent.review.invoke("t", tag="next")
    assert handle.wait() == "v2(t)"  # v2's file, although the imported module is v1's
    execution = client.executions.get(handle.exec_id)
    assert execution.metadata["deployment"]["version"] == 2
    assert execution.metadata["deployment"]["archive_key"] == v2.archive_key

    client.deployments.promote("review", "next")
    assert client.deployments.invoke("review", "t").wait() == "v2(t)"
    client.deployments.rollback("review")
    assert client.deployments.invoke("review@default", "t").wait() == "v1(t)"
    assert [e.id for e in client.executions.list(flow="review", version=2)][-1] == handle.exec_id
    assert len(client.executions.list(flow="review", version=1)) == 2
    # The process's own flow is untouched by loading versions of it.
    assert agent.review.run("t").wait() == "v0(t)"


def test_a_waiting_execution_stays_on_its_version(runtime: Runtime, project: Project) -> None:
    agent = project("v0", waits=True)  # what this process imported and keeps
    project("v1", waits=True)
    agent.review.deploy()
    client = KitaruClient(runtime)
    waiting = agent.review.invoke("t")
    assert waiting.status == "waiting"
    project("v2", waits=True)
    agent.review.deploy(tag="default")
    answered = client.executions.input(waiting.exec_id, True)
    # Its own version's code after the wait: not the newer default, not this process's.
    assert answered.wait() == "v1(t) approved by v1"
    assert agent.review.invoke("u").status == "waiting"
    newest = client.executions.list(flow="review", limit=1)[0]
    assert newest.metadata["deployment"]["version"] == 2


def test_replay_on_another_version(runtime: Runtime, project: Project) -> None:
    agent = project("v0")
    project("v1")
    agent.review.deploy()
    project("v2")
    agent.review.deploy()
    client = KitaruClient(runtime)
    original = agent.review.invoke("t")
    assert original.wait() == "v1(t)"
    same = client.executions.replay(original.exec_id, "draft")
    assert same.wait() == "v1(t)"
    fixed = client.executions.replay(original.exec_id, "draft", version=2)
    assert fixed.wait() == "v2(t)"
    replayed = client.executions.get(fixed.exec_id)
    assert replayed.metadata["deployment"]["version"] == 2
    assert replayed.original_exec_id == original.exec_id
    with pytest.raises(KitaruNotFoundError, match="no version 9"):
        client.executions.replay(original.exec_id, "draft", version=9)


def test_interactive_flows_are_refused(runtime: Runtime) -> None:
    namespace: dict[str, object] = {"__name__": "__kitaru_interactive__"}
    exec("def typed_in(x: int) -> int:\n    return x\n", namespace)
    flow_obj = Flow(namespace["typed_in"])  # type: ignore[arg-type]
    with pytest.raises(KitaruUsageError, match="interactive session"):
        flow_obj.deploy()
    assert KitaruClient(runtime).deployments.list() == []


def test_bad_input_changes_nothing(runtime: Runtime, project: Project) -> None:
    agent = project("v1")
    client = KitaruClient(runtime)
    with pytest.raises(KitaruNotFoundError, match="no deployed versions"):
        agent.review.invoke("t")
    with pytest.raises(KitaruUsageError, match="needs that tag"):
        agent.review.deploy(weight=10)
    with pytest.raises(KitaruUsageError, match="0 to 100"):
        agent.review.deploy(tag="canary", weight=101)
    assert client.deployments.list("review") == []
    agent.review.deploy()
    before = (client.deployments.tags("review"), client.deployments.history("review"))
    with pytest.raises(KitaruNotFoundError, match="no version 5"):
        client.deployments.tag("review", "canary", 5)
    with pytest.raises(KitaruUsageError, match="0 to 100"):
        client.deployments.tag("review", "canary", 1, weight=-3)
    with pytest.raises(KitaruNotFoundError, match="no tag 'canary'"):
        client.deployments.promote("review", "canary")
    with pytest.raises(KitaruNotFoundError, match="no tag 'nope'"):
        agent.review.invoke("t", tag="nope")
    with pytest.raises(KitaruNotFoundError, match="no deployed versions"):
        client.deployments.invoke("unknown_flow", "t")
    assert (client.deployments.tags("review"), client.deployments.history("review")) == before
    assert client.executions.list(flow="review") == []


def test_canary_routing_is_sticky_per_key(runtime: Runtime, project: Project) -> None:
    agent = project("v1")
    agent.review.deploy()
    project("v2")
    agent.review.deploy(tag="canary", weight=10)
    keys = [f"order-{n}" for n in range(40)]
    expected = {k: route("review", k, 1, [("canary", 2, 10)])[1] for k in keys}
    results = {k: agent.review.invoke("t", execution_id=k).wait() for k in keys}
    assert results == {k: f"v{expected[k]}(t)" for k in keys}
    # Again with the same keys: the same executions (idempotent), the same versions.
    assert {k: agent.review.invoke("t", execution_id=k).wait() for k in keys} == results
    client = KitaruClient(runtime)
    assert {e.id for e in client.executions.list(flow="review", version=2)} == {
        k for k, v in expected.items() if v == 2
    }
