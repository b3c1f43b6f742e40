"""``kitaru mcp``: an MCP server (stdio) that lets agent tools inspect and steer executions.

The tools are thin edges over :class:`~kitaru.KitaruClient`, so an agent gets exactly what the CLI
gives a person: the same listings, the same answer checks (a bad answer is a tool error naming the
problem, and the wait stays open), the same replay. Artifacts are shown as the CLI's default
``artifacts get`` view: JSON-stored values as JSON, anything else described from the state store's
record. Nothing is ever unpickled here: an agent talking to this server cannot make it run code
that an artifact's bytes name.

The MCP SDK is the ``mcp`` extra, imported only when the server starts.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kitaru._install import install_hint
from kitaru.errors import KitaruError, KitaruMissingDependencyError, KitaruUsageError

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from kitaru.client import KitaruClient

__all__ = ["READ_TOOLS", "WRITE_TOOLS", "build_server", "serve"]

#: Tools that only look; ``kitaru mcp --read-only`` offers these alone.
READ_TOOLS = ("list_executions", "get_execution", "pending_waits", "list_artifacts", "artifact_preview")
#: Tools that steer executions.
WRITE_TOOLS = ("answer_wait", "replay_execution")

_INSTRUCTIONS = (
    "Tools over kitaru, a durable execution runtime for Python agents. Executions run flows; a "
    "flow may wait for a person's answer. pending_waits lists what waits for an answer, with the "
    "question and the JSON Schema the answer must match; answer_wait records an answer (checked "
    "against that schema first) and moves the flow on. replay_execution re-runs an execution from "
    "a checkpoint or wait as a new execution. Artifact previews never load pickled values."
)


def _require_sdk() -> None:
    try:
        import mcp.server.mcpserver  # noqa: F401
    except ImportError as exc:
        raise KitaruMissingDependencyError(
            f"`kitaru mcp` needs the MCP SDK ({exc.name} is not installed). Install the mcp extra: "
            f"{install_hint('mcp')}"
        ) from None


def _plain(value: Any) -> Any:
    """JSON data only (timestamps and ids as they are, anything odd as its text)."""
    return json.loads(json.dumps(value, default=str))


class _Tools:
    """The tool bodies; each returns a JSON object and raises KitaruError for the agent to read."""

    def __init__(self, reader: Callable[[], KitaruClient], writer: Callable[[], KitaruClient]) -> None:
        self._reader = reader
        self._writer = writer

    def list_executions(
        self, flow: str | None = None, status: str | None = None, limit: int = 50
    ) -> dict[str, Any]:
        """Executions, newest first (summaries without checkpoints and waits). Filter by flow name
        and by status (running, waiting, completed, failed, cancelled)."""
        if limit < 1:
            raise KitaruUsageError(f"limit must be at least 1 (got {limit}).")
        found = self._reader().executions.list(flow=flow, status=status, limit=limit)
        return {"executions": _plain([e.to_dict() for e in found])}

    def get_execution(self, exec_id: str) -> dict[str, Any]:
        """One execution (an id or a unique prefix of one): status, error, checkpoints with their
        output artifact ids, waits with their questions, schemas and status, and metadata."""
        return {"execution": _plain(self._reader().executions.get(exec_id).to_dict())}

    def pending_waits(self, flow: str | None = None) -> dict[str, Any]:
        """Everything waiting on an answer, oldest first: each open wait's execution, name,
        question, the JSON Schema (schema) its answer must match and that type in short
        (expects). Answer one with answer_wait."""
        found = self._reader().executions.pending_waits(flow=flow)
        return {"waits": _plain([w.to_dict() for w in found])}

    def answer_wait(
        self, exec_id: str, value: Any, wait: str | None = None, resume: bool = True
    ) -> dict[str, Any]:
        """Answer an open wait of a waiting execution with a JSON value. The answer is checked
        against the wait's JSON Schema first: a bad one is refused with the reason, and the wait
        stays open. Name the wait when several are open. With resume (the default) the flow moves
        on at once; the result is the execution afterwards (completed, or waiting again)."""
        from kitaru._engine.waits import MAX_ANSWER_DEPTH, json_depth

        if json_depth(value) > MAX_ANSWER_DEPTH:
            raise KitaruUsageError(
                f"the answer nests more than {MAX_ANSWER_DEPTH} levels deep; give a flatter value."
            )
        client = self._writer()
        handle = client.executions.input(exec_id, value, wait=wait, resume=resume)
        return {"execution": _plain(client.executions.get(handle.exec_id).to_dict())}

    def replay_execution(
        self,
        exec_id: str,
        from_step: str,
        overrides: dict[str, Any] | None = None,
        args: dict[str, Any] | None = None,
        version: int | None = None,
    ) -> dict[str, Any]:
        """Re-run an execution as a new one from the checkpoint or wait from_step (its name, or
        name:N for the Nth call), reusing everything recorded above it. overrides replaces reused checkpoint
        outputs or wait answers by name; args replaces flow arguments by parameter name; version
        runs a deployed version of the flow. The result is the new execution."""
        client = self._writer()
        handle = client.executions.replay(
            exec_id, from_step, overrides=overrides or {}, args=args, version=version
        )
        return {
            "replayed_from": client.executions.resolve(exec_id),
            "execution": _plain(client.executions.get(handle.exec_id).to_dict()),
        }

    def list_artifacts(
        self, exec_id: str | None = None, name: str | None = None, tag: str | None = None
    ) -> dict[str, Any]:
        """An execution's artifacts in creation order (ids, names, types, sizes, hashes), or with
        tag those of every execution saved with that tag."""
        if exec_id is None and tag is None:
            raise KitaruUsageError("name an execution (exec_id) or a tag.")
        found = self._reader().artifacts.list(exec_id, name=name, tag=tag)
        return {"artifacts": _plain([a.to_dict() for a in found])}

    def artifact_preview(self, artifact_id: str) -> dict[str, Any]:
        """One artifact: JSON-stored values (json, pydantic, dataclass serializers) as their JSON
        value (view "json"); anything else is described, never loaded (view "none"), since loading
        a pickled value would run code its bytes name."""
        artifact = self._reader().artifacts.get(artifact_id)
        described = _plain(artifact.to_dict())
        if artifact.is_json:
            return {**described, "view": "json", "value": _plain(artifact.as_json())}
        hint = (
            f"`kitaru artifacts get {artifact.id} --out FILE` writes its bytes"
            if artifact.serializer == "bytes"
            else f"`kitaru artifacts get {artifact.id} --load` shows the value in a terminal"
            + (" (this unpickles it)" if artifact.serializer == "cloudpickle" else "")
        )
        return {**described, "view": "none", "value": None, "hint": f"not shown here: {hint}."}


def build_server(
    *, stack: str | None = None, read_only: bool = False, client: KitaruClient | None = None
) -> MCPServer[Any]:
    """The MCP server over the stack ``stack`` (default: the active one, or the server after
    ``kitaru login``); ``read_only`` offers only the tools that look. ``client``: use this one."""
    _require_sdk()
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp_types import ToolAnnotations

    from kitaru.client import KitaruClient

    clients: dict[bool, KitaruClient] = {}

    def opened(read: bool) -> KitaruClient:
        if client is not None:
            return client
        if read not in clients:
            clients[read] = KitaruClient(stack=stack, read_only=read)
        return clients[read]

    tools = _Tools(lambda: opened(True), lambda: opened(False))
    server: MCPServer[Any] = MCPServer("kitaru", instructions=_INSTRUCTIONS)

    def register(name: str, *, writes: bool) -> None:
        body: Callable[..., dict[str, Any]] = getattr(tools, name)

        @functools.wraps(body)
        def call(**kwargs: Any) -> dict[str, Any]:
            try:
                return body(**kwargs)
            except KitaruError as exc:
                # The agent reads the message (what happened, why, what to do) and may try again;
                # the server is not at fault, so it is no crash.
                raise ToolError(str(exc)) from exc

        # functools.wraps hands the SDK the body's signature (the input schema) and docstring.
        server.add_tool(
            call,
            name=name,
            description=" ".join((body.__doc__ or "").split()),
            annotations=ToolAnnotations(read_only_hint=not writes, destructive_hint=False),
        )

    for name in READ_TOOLS:
        register(name, writes=False)
    if not read_only:
        for name in WRITE_TOOLS:
            register(name, writes=True)
    return server


def serve(*, stack: str | None = None, read_only: bool = False) -> None:
    """Serve MCP on this process's stdin and stdout until the client closes them. The flows an
    answer moves on run in this process; what they print goes to stderr, never onto the wire."""
    build_server(stack=stack, read_only=read_only).run("stdio")
