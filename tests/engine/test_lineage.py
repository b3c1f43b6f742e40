"""Lineage: which artifacts fed which call, for fan-out/fan-in and across executions."""

from __future__ import annotations

import kitaru
import kitaru.lineage
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime


@checkpoint
def split(text: str) -> list[str]:
    return text.split()


@checkpoint
def shout(word: str) -> str:
    return word.upper() + "!"


@checkpoint
def join(words: list[str]) -> str:
    return " ".join(words)


@flow
def fan(text: str) -> str:
    words = split(text)
    loud = [shout(w) for w in words]  # fan-out over split's elements
    return join(loud)  # fan-in of every shout


@checkpoint
def summarize(exec_id: str) -> str:
    return kitaru.load(exec_id, "join")[:5]


@flow
def follow_up(exec_id: str) -> str:
    return summarize(exec_id)


def edges(graph: kitaru.lineage.LineageGraph) -> set[tuple[str, str]]:
    return {(e.source, e.target) for e in graph.edges}


class TestLineage:
    def test_fan_out_fan_in(self, runtime: Runtime) -> None:
        handle = fan.run("ab cd ef")
        assert handle.wait(timeout=60) == "AB! CD! EF!"
        graph = KitaruClient().executions.graph(handle.exec_id)
        assert edges(graph) == {
            ("input:text", "split"),
            ("split", "shout"),
            ("split", "shout:2"),
            ("split", "shout:3"),
            ("shout", "join"),
            ("shout:2", "join"),
            ("shout:3", "join"),
            ("join", "result"),
        }
        [into_join] = [e for e in graph.edges if e.source == "shout:2"]
        assert into_join.name == "shout" and into_join.data_type == "builtins:str"

    def test_lineage_across_executions_through_load(self, runtime: Runtime) -> None:
        first = fan.run("ab cd")
        first.wait(timeout=60)
        second = follow_up.run(first.exec_id)
        assert second.wait(timeout=60) == "AB! C"
        graph = KitaruClient().executions.graph(second.exec_id)
        assert (f"{first.exec_id}/join", "summarize") in edges(graph)
        external = [n for n in graph.nodes if n.kind == "external"]
        assert [n.id for n in external] == [f"{first.exec_id}/join"]
        assert ("input:exec_id", "summarize") in edges(graph)
        assert "digraph" in graph.to_dot()

    def test_replayed_calls_keep_their_edges(self, runtime: Runtime) -> None:
        original = fan.run("ab cd")
        original.wait(timeout=60)
        replayed = KitaruClient().executions.replay(original.exec_id, "join")
        replayed.wait(timeout=60)
        assert edges(KitaruClient().executions.graph(replayed.exec_id)) == edges(
            KitaruClient().executions.graph(original.exec_id)
        )
