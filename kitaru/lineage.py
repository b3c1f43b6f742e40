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

    def producer(a: ArtifactRecord) -> str:
        """The node that made artifact ``a``, as this execution sees it."""
        if a.type == "input":
            node = Node(f"input:{a.name}", "input", a.name)
        elif a.type == "answer" and a.call_id:
            node = Node(f"wait:{a.call_id}", "wait", a.call_id)
        elif a.call_id and (a.exec_id == exec_id or a.call_id in nodes):
            node = Node(a.call_id.split("/", 1)[0], "checkpoint", a.call_id.split("/", 1)[0])
        else:
            node = Node(f"{a.exec_id}/{a.name}", "external", f"{a.name} @ {a.exec_id[:10]}")
        nodes.setdefault(node.id, node)
        return node.id

    def link(artifact_id: str, target: str) -> None:
        a = artifact(artifact_id)
        if a is not None:
            edges.append(Edge(producer(a), target, a.id, a.name, a.data_type, a.size))

    for r in journal:
        if r.kind == "input" and r.artifact_id:
            a = artifact(r.artifact_id)
            if a is not None:
                nodes.setdefault(f"input:{a.name}", Node(f"input:{a.name}", "input", a.name))
        elif r.kind == "checkpoint_completed" and r.call_id:
            nodes.setdefault(r.call_id, Node(r.call_id, "checkpoint", r.call_id))
            for artifact_id in (r.data or {}).get("inputs", []):
                link(artifact_id, r.call_id)
        elif r.kind == "load" and r.call_id and r.artifact_id:
            nodes.setdefault(r.call_id, Node(r.call_id, "checkpoint", r.call_id))
            a = artifact(r.artifact_id)
            if a is not None:
                source = Node(f"{a.exec_id}/{a.name}", "external", f"{a.name} @ {a.exec_id[:10]}")
                nodes.setdefault(source.id, source)
                edges.append(Edge(source.id, r.call_id, a.id, a.name, a.data_type, a.size))
        elif r.kind == "wait_opened" and r.call_id:
            nodes.setdefault(f"wait:{r.call_id}", Node(f"wait:{r.call_id}", "wait", r.call_id))
        elif r.kind == "flow_completed":
            nodes.setdefault("result", Node("result", "result", "result"))
            for artifact_id in (r.data or {}).get("inputs", []):
                link(artifact_id, "result")
    # Loads are recorded before the checkpoint's outcome: keep edges in journal order, unique.
    unique = list(dict.fromkeys(edges))
    return LineageGraph(exec_id, list(nodes.values()), unique)
