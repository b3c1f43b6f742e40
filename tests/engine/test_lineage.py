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


@checkpoint
def publish(text: str, signature: str) -> str:
    return f"{text} ({signature})"


@flow
def reviewed(exec_id: str) -> str:
    quoted = summarize(exec_id)
    signature = kitaru.wait(name="approve", question="Signed by?", schema=str)
    return publish(quoted, signature)


class TestWholeGraph:
    """The graph a user reads (`executions graph`, `-o dot`, `-o json`) node by node: inputs,
    checkpoints, waits and their answers (a text answer is tracked; a bool is a shared object),
    artifacts of other executions, the result."""

    def test_every_node_and_edge_of_a_flow_with_a_wait_and_a_load(self, runtime: Runtime) -> None:
        first = fan.run("ab cd")
        first.wait(timeout=60)
        handle = reviewed.run(first.exec_id)
        KitaruClient().executions.input(handle.exec_id, "ana").wait(timeout=60)
        graph = KitaruClient().executions.graph(handle.exec_id)
        short = first.exec_id[:10]
        assert graph.exec_id == handle.exec_id
        assert [(n.id, n.kind, n.label) for n in graph.nodes] == [
            ("input:exec_id", "input", "exec_id"),
            ("summarize", "checkpoint", "summarize"),
            (f"{first.exec_id}/join", "external", f"join @ {short}"),
            ("wait:approve", "wait", "approve"),
            ("publish", "checkpoint", "publish"),
            ("result", "result", "result"),
        ]
        assert [(e.source, e.target, e.name, e.data_type) for e in graph.edges] == [
            (f"{first.exec_id}/join", "summarize", "join", "builtins:str"),
            ("input:exec_id", "summarize", "exec_id", "builtins:str"),
            ("summarize", "publish", "summarize", "builtins:str"),
            ("wait:approve", "publish", "approve", "builtins:str"),
            ("publish", "result", "publish", "builtins:str"),
        ]
        assert all(e.size > 0 for e in graph.edges)
        assert [e.source for e in graph.inputs_of("publish")] == ["summarize", "wait:approve"]
        assert graph.inputs_of("input:exec_id") == []
        as_dict = graph.to_dict()
        assert as_dict["exec_id"] == handle.exec_id
        assert as_dict["nodes"][3] == {"id": "wait:approve", "kind": "wait", "label": "approve"}
        assert as_dict["edges"][4]["source"] == "publish" and as_dict["edges"][4]["target"] == "result"
        assert graph.to_dot().splitlines() == [
            f'digraph "{handle.exec_id}" {{',
            "  rankdir=LR;",
            '  "input:exec_id" [label="exec_id", shape=ellipse];',
            '  "summarize" [label="summarize", shape=box];',
            f'  "{first.exec_id}/join" [label="join @ {short}", shape=note];',
            '  "wait:approve" [label="approve", shape=diamond];',
            '  "publish" [label="publish", shape=box];',
            '  "result" [label="result", shape=doublecircle];',
            f'  "{first.exec_id}/join" -> "summarize" [label="join (str)"];',
            '  "input:exec_id" -> "summarize" [label="exec_id (str)"];',
            '  "summarize" -> "publish" [label="summarize (str)"];',
            '  "wait:approve" -> "publish" [label="approve (str)"];',
            '  "publish" -> "result" [label="publish (str)"];',
            "}",
        ]

    def test_an_open_wait_is_a_node_before_it_is_answered(self, runtime: Runtime) -> None:
        first = fan.run("ab")
        first.wait(timeout=60)
        handle = reviewed.run(first.exec_id)
        graph = KitaruClient().executions.graph(handle.exec_id)
        assert ("wait:approve", "wait", "approve") in [(n.id, n.kind, n.label) for n in graph.nodes]
        assert "result" not in [n.id for n in graph.nodes]

    def test_each_edge_names_the_artifact_that_flowed(self, runtime: Runtime) -> None:
        first = fan.run("ab")
        first.wait(timeout=60)
        handle = reviewed.run(first.exec_id)
        KitaruClient().executions.input(handle.exec_id, "ana").wait(timeout=60)
        client = KitaruClient()
        graph = client.executions.graph(handle.exec_id)
        [joined] = [a for a in client.artifacts.list(first.exec_id) if a.name == "join"]
        [summary] = [a for a in client.artifacts.list(handle.exec_id) if a.name == "summarize"]
        by_source = {e.source: e.artifact_id for e in graph.edges if e.target in ("summarize", "publish")}
        assert by_source[f"{first.exec_id}/join"] == joined.id  # a load
        assert by_source["summarize"] == summary.id  # an output passed on


@checkpoint
def noted(text: str) -> str:
    kitaru.log(chars=len(text))
    kitaru.save("scratch", text * 2)
    return text


@flow
def chatty(text: str) -> str:
    kitaru.log(stage="start")
    kitaru.save("memo", text)
    return noted(text)


def test_logs_and_saves_are_not_nodes(runtime: Runtime) -> None:
    handle = chatty.run("hi")
    assert handle.wait(timeout=60) == "hi"
    graph = KitaruClient().executions.graph(handle.exec_id)
    assert [(n.id, n.kind) for n in graph.nodes] == [
        ("input:text", "input"),
        ("noted", "checkpoint"),
        ("result", "result"),
    ]
