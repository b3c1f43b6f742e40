"""The client backend over HTTP: what ``KitaruClient()`` becomes after ``kitaru login``.

It offers the same calls as the local client (``executions.list/get/latest/input/abort_wait/
pending_waits/stats/cancel/retry/resume/replay/diff/logs``, ``artifacts.list (by execution or
tag)/get/preview``, ``deployments.list/tags/get/history/tag/untag/promote/rollback/invoke``, and
``secrets``, the SecretStore :mod:`kitaru.secrets` uses after a login: ciphertext only, encrypted
and decrypted here with ``KITARU_SECRETS_KEY``) and returns the same views (``Execution``,
``Wait``...), and ``cache`` (the server's checkpoint cache, for ``kitaru cache list|clear``), so
the CLI's commands work unchanged against a server. Driving happens on the server:
``input``, ``retry``, ``resume`` and ``replay`` return once it accepted the work, with a handle
whose ``wait()`` polls the execution until it stops running.
"""

from __future__ import annotations

import atexit
import builtins
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kitaru.errors import KitaruStoreError, KitaruTimeoutError, KitaruUsageError
from kitaru.remote import _wire

__all__ = ["RemoteClient", "RemoteHandle", "server_session", "shared_client"]

_TIMEOUT = 60.0


def _http(url: str, key: str) -> Any:
    import httpx

    return httpx.Client(
        base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {key}"}, timeout=_TIMEOUT
    )


def _check(response: Any) -> Any:
    if response.status_code >= 400:
        try:
            data = response.json()
        except ValueError:
            data = response.text
        if response.status_code in (401, 403):
            message = (data.get("error") or {}).get("message") if isinstance(data, dict) else str(data)
            raise KitaruUsageError(f"the kitaru server refused the request: {message}")
        raise _wire.error_from_json(data, response.status_code)
    return response.json()


def _request(client: Any, method: str, path: str, **kwargs: Any) -> Any:
    import httpx

    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise KitaruStoreError(
            f"cannot reach the kitaru server {client.base_url} ({type(exc).__name__}: {exc}). "
            "Check it runs (`kitaru status`), or `kitaru logout` to use the local stack."
        ) from None
    return _check(response)


def server_session(url: str, key: str) -> dict[str, Any]:
    """Who the key is on the server at ``url`` (raises when it is refused or unreachable)."""
    with _http(url, key) as client:
        result: dict[str, Any] = _request(client, "GET", "/api/v1/session")
        return result


def _execution(data: dict[str, Any]) -> Any:
    from kitaru.client import CheckpointCall, Execution, Wait

    fields = Execution.__dataclass_fields__
    data = {k: v for k, v in data.items() if k in fields}  # a list's summaries carry a few more
    data["checkpoints"] = tuple(CheckpointCall(**c) for c in data.get("checkpoints", ()))
    data["waits"] = tuple(Wait(**w) for w in data.get("waits", ()))
    return Execution(**data)


@dataclass(frozen=True, slots=True)
class RemoteHandle:
    """An execution the server drives."""

    exec_id: str
    _client: RemoteClient

    def status(self) -> str:
        return str(self._client.executions.get(self.exec_id).status)

    def wait(self, timeout: float | None = None, interval: float = 0.2) -> Any:
        """Poll until the execution stops running; returns it (an ``Execution``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            execution = self._client.executions.get(self.exec_id)
            if execution.status != "running":
                return execution
            if deadline is not None and time.monotonic() > deadline:
                raise KitaruTimeoutError(
                    f"execution {self.exec_id} is still running after {timeout} s; see it with "
                    f"`kitaru executions get {self.exec_id}`."
                )
            time.sleep(interval)


class _Executions:
    def __init__(self, client: RemoteClient) -> None:
        self._client = client

    def resolve(self, exec_id: str) -> str:
        return str(self.get(exec_id).id)

    def get(self, exec_id: str) -> Any:
        execution = _execution(self._client._call("GET", f"/api/v1/executions/{exec_id}"))
        if execution.result_artifact:
            self._client._owners[execution.result_artifact] = execution.id
        return execution

    def list(
        self,
        *,
        flow: str | None = None,
        status: str | None = None,
        limit: int = 50,
        version: int | None = None,
    ) -> builtins.list[Any]:
        found: builtins.list[Any] = []
        cursor = None
        while len(found) < limit:
            params: dict[str, Any] = {"limit": min(500, limit - len(found))}
            filters = (("flow", flow), ("status", status), ("version", version), ("cursor", cursor))
            params.update({k: v for k, v in filters if v is not None})
            page = self._client._call("GET", "/api/v1/executions", params=params)
            found += [_execution(item) for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        return found

    def input(
        self, exec_id: str, value: Any, *, wait: str | None = None, resume: bool = True
    ) -> RemoteHandle:
        """Answer a wait; the server checks it against the wait's JSON Schema and resumes the flow."""
        if not resume:
            raise KitaruUsageError("a kitaru server always resumes an answered execution; drop --no-resume.")
        if wait is None:
            execution = self.get(exec_id)
            open_waits = execution.open_waits
            if len(open_waits) != 1:
                names = ", ".join(w.name for w in open_waits) or "none"
                raise KitaruUsageError(
                    f"execution {exec_id} has {len(open_waits)} open waits ({names}); choose one "
                    "with --wait NAME."
                )
            wait = open_waits[0].name
        self._client._call("POST", f"/api/v1/executions/{exec_id}/waits/{wait}", json={"value": value})
        return RemoteHandle(exec_id, self._client)

    def abort_wait(
        self, exec_id: str, *, wait: str | None = None, reason: str | None = None, resume: bool = True
    ) -> RemoteHandle:
        """Abort a wait instead of answering it (the flow's ``wait()`` raises
        ``KitaruWaitAborted``); the server resumes the flow."""
        if not resume:
            raise KitaruUsageError(
                "a kitaru server always resumes an aborted wait's execution; drop --no-resume."
            )
        wait = wait or self._only_open_wait(exec_id)
        self._client._call(
            "POST", f"/api/v1/executions/{exec_id}/waits/{_seg(wait)}/abort", json={"reason": reason}
        )
        return RemoteHandle(exec_id, self._client)

    def _only_open_wait(self, exec_id: str) -> str:
        open_waits = self.get(exec_id).open_waits
        if len(open_waits) != 1:
            names = ", ".join(w.name for w in open_waits) or "none"
            raise KitaruUsageError(
                f"execution {exec_id} has {len(open_waits)} open waits ({names}); choose one "
                "with --wait NAME."
            )
        return str(open_waits[0].name)

    def latest(self, *, flow: str | None = None, status: str | None = None) -> Any:
        """The newest execution (of ``flow``, in ``status``); KitaruNotFoundError when there is none."""
        from kitaru.errors import KitaruNotFoundError

        found = self.list(flow=flow, status=status, limit=1)
        if not found:
            which = "".join(
                [f" of flow {flow!r}" if flow else "", f" with status {status}" if status else ""]
            )
            raise KitaruNotFoundError(f"no execution{which} yet. List them with `kitaru executions list`.")
        return self.get(found[0].id)

    def pending_waits(self, exec_id: str | None = None, *, flow: str | None = None) -> builtins.list[Any]:
        """Every open wait of the server's waiting executions (of ``flow``; of ``exec_id``
        alone when given, also while its flow holds for an answer), oldest first."""
        from kitaru._client_views import PendingWait, owed_waits

        if exec_id is not None:
            return owed_waits(self.get(exec_id), flow)
        params = {"flow": flow} if flow is not None else {}
        data = self._client._call("GET", "/api/v1/waits", params=params)
        return [PendingWait(**w) for w in data["items"]]

    def stats(self, *, flow: str | None = None, since: float | None = None) -> Any:
        """Per-flow figures computed by the server (see ``KitaruClient().executions.stats``)."""
        from kitaru._client_views import ExecutionStats, FlowStats

        params = {k: v for k, v in (("flow", flow), ("since", since)) if v is not None}
        data = self._client._call("GET", "/api/v1/stats", params=params)
        return ExecutionStats(since=data["since"], flows=tuple(FlowStats(**f) for f in data["flows"]))

    def resume(self, exec_id: str) -> RemoteHandle:
        self._client._call("POST", f"/api/v1/executions/{exec_id}/resume")
        return RemoteHandle(exec_id, self._client)

    def retry(self, exec_id: str) -> RemoteHandle:
        self._client._call("POST", f"/api/v1/executions/{exec_id}/retry")
        return RemoteHandle(exec_id, self._client)

    def replay(
        self,
        exec_id: str,
        from_: str,
        *,
        overrides: dict[str, Any] | None = None,
        args: dict[str, Any] | None = None,
        **flow_inputs: Any,
    ) -> RemoteHandle:
        from kitaru._engine.replay import merge_flow_inputs

        body = {"from": from_, "overrides": overrides, "args": merge_flow_inputs(args, flow_inputs)}
        created = self._client._call("POST", f"/api/v1/executions/{exec_id}/replay", json=body)
        return RemoteHandle(str(created["id"]), self._client)

    def diff(self, a: str, b: str) -> Any:
        from kitaru.diff import DiffEntry, ExecutionDiff

        data = self._client._call("GET", f"/api/v1/executions/{a}/diff/{b}")
        return ExecutionDiff(data["a"], data["b"], [DiffEntry(**e) for e in data["entries"]])

    def logs(
        self,
        exec_id: str,
        *,
        checkpoint: str | None = None,
        after: int = 0,
        source: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[Any]:
        import httpx

        from kitaru.client import LogEntry, check_log_selection, select_logs

        check_log_selection(checkpoint, source, limit)

        entries = []
        try:
            with self._client._http.stream(
                "GET", f"/api/v1/executions/{exec_id}/logs", params={"after": after}
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    _check(response)
                for line in response.iter_lines():
                    if line.startswith("data: ") and '"seq"' in line:
                        e = json.loads(line[len("data: ") :])
                        entries.append(LogEntry(e["call_id"], e["stream"], e["text"], e["ts"], e["seq"]))
        except httpx.HTTPError as exc:
            raise KitaruStoreError(f"cannot read logs from {self._client.url}: {exc}") from None
        if checkpoint is not None:
            entries = [
                e
                for e in entries
                if e.call_id and (e.call_id == checkpoint or e.call_id.startswith(checkpoint + ":"))
            ]
        return select_logs(entries, source, limit)

    def cancel(self, exec_id: str) -> Any:
        return _execution(self._client._call("POST", f"/api/v1/executions/{exec_id}/cancel"))

    def runner_gone(self, exec_id: str) -> bool:
        return False  # the server recovers executions whose runner died on its own

    def recover(self, *, limit: int = 100) -> builtins.list[Any]:
        raise KitaruUsageError(
            "a kitaru server recovers executions whose runner died on its own; nothing to do here "
            "(`kitaru logout` to recover a local stack's executions)."
        )


@dataclass(frozen=True, slots=True)
class RemoteArtifact:
    """An artifact's metadata on the server; its bytes are fetched (and checked) on demand."""

    id: str
    exec_id: str
    name: str
    version: int
    type: str
    serializer: str
    data_type: str
    content_hash: str
    size: int
    call_id: str | None
    created_at: float
    uri: str | None
    _client: RemoteClient
    tags: list[str] = field(default_factory=list)

    def read_bytes(self) -> bytes:
        import hashlib

        with self._client._http.stream(
            "GET", f"/api/v1/executions/{self.exec_id}/artifacts/{self.id}/content"
        ) as response:
            if response.status_code >= 400:
                response.read()
                _check(response)
            data: bytes = response.read()
        if f"sha256:{hashlib.sha256(data).hexdigest()}" != self.content_hash:
            raise KitaruStoreError(
                f"artifact {self.id} came from the server cut short or changed (expected "
                f"{self.content_hash})."
            )
        return data

    @property
    def is_json(self) -> bool:
        return self.serializer in ("json", "pydantic", "dataclass")

    def as_json(self) -> Any:
        if not self.is_json:
            raise KitaruUsageError(
                f"artifact {self.id} is stored by the {self.serializer!r} serializer, not as JSON."
            )
        return json.loads(self.read_bytes())

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if not k.startswith("_")}


class _Artifacts:
    def __init__(self, client: RemoteClient) -> None:
        self._client = client

    def list(
        self,
        exec_id: str | None = None,
        *,
        name: str | None = None,
        type: str | None = None,
        tag: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Any]:
        """An execution's artifacts; with ``tag``, those of any execution (of ``exec_id`` only,
        when given) saved with that tag, newest first."""
        if tag is not None:
            data = self._client._call("GET", "/api/v1/artifacts", params={"tag": tag, "limit": limit})
            full_id = self._client.executions.resolve(exec_id) if exec_id is not None else None
            found = [self._view(a) for a in data["items"]]
            for a in found:
                self._client._owners[a.id] = a.exec_id
            return [
                a
                for a in found
                if (full_id is None or a.exec_id == full_id)
                and (name is None or a.name == name)
                and (type is None or a.type == type)
            ]
        if exec_id is None:
            raise KitaruUsageError(
                "artifacts.list() needs an execution id, or a tag to search every execution by."
            )
        params = {k: v for k, v in (("name", name), ("type", type)) if v}
        data = self._client._call("GET", f"/api/v1/executions/{exec_id}/artifacts", params=params)
        return [self._view(a) for a in data["items"]]

    def _view(self, data: dict[str, Any]) -> RemoteArtifact:
        data = dict(data)
        data.pop("inline", None)
        return RemoteArtifact(**data, _client=self._client)

    def get(self, artifact_id: str, *, exec_id: str | None = None) -> RemoteArtifact:
        # The server finds an artifact through its execution; a result this client has seen
        # (`executions.get`) is found through the execution it came with.
        exec_id = exec_id or self._client._owners.get(artifact_id)
        if exec_id is None:
            raise KitaruUsageError(
                f"a kitaru server finds artifacts through their execution: list them with "
                f"`kitaru artifacts list EXEC_ID` (artifact {artifact_id})."
            )
        return self._view(self._client._call("GET", f"/api/v1/executions/{exec_id}/artifacts/{artifact_id}"))

    def preview(self, artifact_id: str, width: int = 200, *, exec_id: str | None = None) -> str:
        artifact = self.get(artifact_id, exec_id=exec_id)
        data = self._client._call(
            "GET", f"/api/v1/executions/{artifact.exec_id}/artifacts/{artifact_id}/preview"
        )
        if data["kind"] != "json":
            return f"({data['data_type']}, {data['size']} bytes)"
        value = data["value"]
        text = value if isinstance(value, str) else json.dumps(value)
        return text if len(text) <= width else text[: width - 4] + " ..."


class _Deployments:
    """``deployments`` over the server's ``/api/v1/deployments``: the same calls and views as
    :class:`kitaru.deployments.Deployments`. Tag moves need an ``admin`` key (the history records
    the key's name); invoking needs ``invoke`` and returns once the server accepted the work."""

    def __init__(self, client: RemoteClient) -> None:
        self._client = client

    def _listing(self, flow: str | None) -> dict[str, Any]:
        params = {"flow": flow} if flow is not None else {}
        data: dict[str, Any] = self._client._call("GET", "/api/v1/deployments", params=params)
        return data

    def list(self, flow: str | None = None) -> builtins.list[Any]:
        from kitaru.deployments import Deployment

        return [_deployment(Deployment, v) for v in self._listing(flow)["versions"]]

    def tags(self, flow: str | None = None) -> builtins.list[Any]:
        from kitaru.store import TagRecord

        return [TagRecord(**t) for t in self._listing(flow)["tags"]]

    def get(self, ref: str) -> Any:
        from kitaru.deployments import DEFAULT_TAG, Deployment, parse_ref

        flow, tag, version = parse_ref(ref)
        if version is not None:
            path = f"/api/v1/deployments/{_seg(flow)}/versions/{version}"
        else:
            path = f"/api/v1/deployments/{_seg(flow)}/tags/{_seg(tag or DEFAULT_TAG)}"
        return _deployment(Deployment, self._client._call("GET", path))

    def history(self, flow: str, tag: str | None = None) -> builtins.list[Any]:
        from kitaru.store import TagMove

        params = {"tag": tag} if tag is not None else {}
        data = self._client._call("GET", f"/api/v1/deployments/{_seg(flow)}/history", params=params)
        return [TagMove(**m) for m in data["items"]]

    def _move(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        from kitaru.store import TagMove

        return TagMove(**self._client._call(method, path, json=body))

    def tag(self, flow: str, tag: str, version: int, *, weight: int | None = None) -> Any:
        body = {"version": version, "weight": weight}
        return self._move("PUT", f"/api/v1/deployments/{_seg(flow)}/tags/{_seg(tag)}", body)

    def untag(self, flow: str, tag: str) -> Any:
        return self._move("DELETE", f"/api/v1/deployments/{_seg(flow)}/tags/{_seg(tag)}")

    def promote(self, flow: str, tag: str) -> Any:
        return self._move("POST", f"/api/v1/deployments/{_seg(flow)}/promote", {"tag": tag})

    def rollback(self, flow: str, *, to: int | None = None) -> Any:
        return self._move("POST", f"/api/v1/deployments/{_seg(flow)}/rollback", {"to": to})

    def invoke(
        self,
        flow: str,
        *args: Any,
        tag: str = "default",
        execution_id: str | None = None,
        **kwargs: Any,
    ) -> RemoteHandle:
        """Start an execution of ``flow``'s deployed version on the server; returns once the
        server created it (the server drives it). Arguments go by name, as JSON."""
        if args:
            raise KitaruUsageError(
                f"invoking {flow!r} through a kitaru server takes the flow's arguments by name "
                "(JSON), not by position: `invoke(flow, topic=...)`, `--args '{\"topic\": ...}'`."
            )
        if "@" in flow:
            flow, _, tag = flow.partition("@")
        body = {"tag": tag, "args": kwargs, "execution_id": execution_id}
        made = self._client._call("POST", f"/api/v1/deployments/{_seg(flow)}/invoke", json=body)
        return RemoteHandle(str(made["id"]), self._client)


class _Secrets:
    """The server's secrets as a (sync) SecretStore for :mod:`kitaru.secrets`: it encrypts a
    value before ``put_secret`` and decrypts what ``get_secret`` returns, so only ciphertext ever
    reaches the server. Reading a value or changing one needs an ``admin`` key; names, ``read``."""

    def __init__(self, client: RemoteClient) -> None:
        self._client = client

    @staticmethod
    def _record(data: dict[str, Any]) -> Any:
        import base64

        from kitaru.store import SecretRecord

        blob = base64.b64decode(data["ciphertext"]) if data.get("ciphertext") is not None else b""
        return SecretRecord(data["name"], blob, data["created_at"], data["updated_at"])

    def put_secret(self, name: str, ciphertext: bytes) -> Any:
        import base64

        body = {"ciphertext": base64.b64encode(ciphertext).decode("ascii")}
        return self._record(self._client._call("PUT", f"/api/v1/secrets/{_seg(name)}", json=body))

    def get_secret(self, name: str) -> Any:
        from kitaru.errors import KitaruNotFoundError

        try:
            return self._record(self._client._call("GET", f"/api/v1/secrets/{_seg(name)}"))
        except KitaruNotFoundError:
            return None

    def list_secrets(self) -> builtins.list[Any]:
        return [self._record(s) for s in self._client._call("GET", "/api/v1/secrets")["items"]]

    def delete_secret(self, name: str) -> bool:
        from kitaru.errors import KitaruNotFoundError

        try:
            self._client._call("DELETE", f"/api/v1/secrets/{_seg(name)}")
        except KitaruNotFoundError:
            return False
        return True


class _Cache:
    """The server's checkpoint cache, with the calls of the local CatalogStore's sync view that
    ``kitaru cache`` makes: listing needs a ``read`` key, clearing an ``admin`` one."""

    def __init__(self, client: RemoteClient) -> None:
        self._client = client

    def list_cache_entries(self, flow: str | None = None) -> builtins.list[Any]:
        from kitaru.store import CacheEntry

        params = {"flow": flow} if flow is not None else {}
        items = self._client._call("GET", "/api/v1/cache", params=params)["items"]
        return [CacheEntry(**item) for item in items]

    def clear_cache(self, flow: str | None = None) -> int:
        params = {"flow": flow} if flow is not None else {}
        return int(self._client._call("DELETE", "/api/v1/cache", params=params)["removed"])


def _seg(part: str) -> str:
    """A path segment: a flow or tag name with ``/`` or ``?`` in it stays one segment."""
    from urllib.parse import quote

    return quote(part, safe="")


def _deployment(cls: Any, data: dict[str, Any]) -> Any:
    data = dict(data)
    data["tags"] = tuple(data.get("tags") or ())
    return cls(**data)


class RemoteClient:
    """``KitaruClient`` over a kitaru server's API (``url``, an API ``key``)."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url.rstrip("/")
        self._http = _http(self.url, key)
        self.executions = _Executions(self)
        self.artifacts = _Artifacts(self)
        self.deployments = _Deployments(self)
        self.secrets = _Secrets(self)
        self.cache = _Cache(self)
        #: Result artifact id -> its execution, for the calls that name only the artifact.
        self._owners: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<RemoteClient {self.url}>"  # never the key

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return _request(self._http, method, path, **kwargs)

    def close(self) -> None:
        self._http.close()


# One client per server and key in a process, for the module-level calls that have no client of
# their own to keep (kitaru.secrets, `kitaru cache`): one connection pool reused by every call
# instead of a new one per call. Keyed by process id too: a forked child must not share its
# parent's sockets, so it makes its own.
_shared: dict[tuple[int, str, str], RemoteClient] = {}
_shared_lock = threading.Lock()


def shared_client(url: str, key: str) -> RemoteClient:
    """This process's client of the server at ``url`` with ``key``, made on first use and closed
    when the process exits."""
    ident = (os.getpid(), url.rstrip("/"), key)
    with _shared_lock:
        client = _shared.get(ident)
        if client is None:
            if not _shared:
                atexit.register(_close_shared)
            client = _shared[ident] = RemoteClient(url, key)
    return client


def _close_shared() -> None:
    with _shared_lock:
        mine = [c for (pid, _, _), c in _shared.items() if pid == os.getpid()]
        _shared.clear()
    for client in mine:
        client.close()
