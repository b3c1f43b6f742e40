"""The lineage graph of an execution: which artifacts fed which call."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kitaru.store import ArtifactRecord, JournalRecord

__all__ = ["Edge", "LineageGraph", "Node"]


@dataclass(frozen=True, slots=True)
class Node:
    """An input, a checkpoint call, a wait, the result, or an artifact of another execution."""

    id: str
    kind: str
    """``input``, ``checkpoint``, ``wait``, ``result`` or ``external``."""
    label: str


@dataclass(frozen=True, slots=True)
class Edge:
    """``artifact`` (produced by ``source``) was an input of ``target``."""

    source: str
    target: str
    artifact_id: str
    name: str
    data_type: str
    size: int


@dataclass(frozen=True, slots=True)
class LineageGraph:
    exec_id: str
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)

    def inputs_of(self, node_id: str) -> list[Edge]:
        """The edges into ``node_id``."""
        return [e for e in self.edges if e.target == node_id]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_dot(self) -> str:
        """Graphviz source: ``kitaru executions graph ID -o dot | dot -Tsvg``."""
        lines = [f'digraph "{self.exec_id}" {{', "  rankdir=LR;"]
        shapes = {"input": "ellipse", "wait": "diamond", "result": "doublecircle", "external": "note"}
        for n in self.nodes:
            lines.append(f'  "{n.id}" [label="{n.label}", shape={shapes.get(n.kind, "box")}];')
        for e in self.edges:
            lines.append(f'  "{e.source}" -> "{e.target}" [label="{e.name} ({e.data_type.split(":")[-1]})"];')
        lines.append("}")
        return "\n".join(lines)


def _input_node(name: str) -> Node:
    return Node(f"input:{name}", "input", name)


def _wait_node(call_id: str) -> Node:
    return Node(f"wait:{call_id}", "wait", call_id)


def _call_node(call_id: str) -> Node:
    return Node(call_id, "checkpoint", call_id)


def _external_node(a: ArtifactRecord) -> Node:
    return Node(f"{a.exec_id}/{a.name}", "external", f"{a.name} @ {a.exec_id[:10]}")


def build_graph(state: Any, exec_id: str) -> LineageGraph:
    """Read ``exec_id``'s journal into its lineage graph."""
    journal: list[JournalRecord] = state.read_journal(exec_id)
    nodes: dict[str, Node] = {}
    edges: list[Edge] = []
    artifacts: dict[str, ArtifactRecord | None] = {}

    def artifact(artifact_id: str) -> ArtifactRecord | None:
        if artifact_id not in artifacts:
            artifacts[artifact_id] = state.get_artifact(artifact_id)
        return artifacts[artifact_id]

    def add(node: Node) -> str:
        nodes.setdefault(node.id, node)
        return node.id

    def producer(a: ArtifactRecord) -> str:
        """The node that made artifact ``a``, as this execution sees it: the input, wait or call
        this journal recorded (a reused call's output names a call of this journal too), else
        an artifact of another execution."""
        if a.type == "input":
            return add(_input_node(a.name))
        if a.type == "answer" and a.call_id:
            return add(_wait_node(a.call_id))
        if a.call_id and (a.exec_id == exec_id or a.call_id in nodes):
            return add(_call_node(a.call_id))
        return add(_external_node(a))

    def link(artifact_id: str, target: str) -> None:
        a = artifact(artifact_id)
        if a is not None:
            edges.append(Edge(producer(a), target, a.id, a.name, a.data_type, a.size))

    for r in journal:
        if r.kind == "input" and r.artifact_id:
            a = artifact(r.artifact_id)
            if a is not None:
                add(_input_node(a.name))
        elif r.kind == "checkpoint_completed" and r.call_id:
            add(_call_node(r.call_id))
            for artifact_id in (r.data or {}).get("inputs", []):
                link(artifact_id, r.call_id)
        elif r.kind == "load" and r.call_id and r.artifact_id:
            add(_call_node(r.call_id))
            a = artifact(r.artifact_id)
            if a is not None:
                edges.append(Edge(add(_external_node(a)), r.call_id, a.id, a.name, a.data_type, a.size))
        elif r.kind == "wait_opened" and r.call_id:
            add(_wait_node(r.call_id))
        elif r.kind == "flow_completed":
            add(Node("result", "result", "result"))
            for artifact_id in (r.data or {}).get("inputs", []):
                link(artifact_id, "result")
    # Loads are recorded before the checkpoint's outcome: keep edges in journal order, unique.
    unique = list(dict.fromkeys(edges))
    return LineageGraph(exec_id, list(nodes.values()), unique)
