"""A state store reached over HTTP: ``state = "https://host:port"`` in a stack.

Each operation of the :class:`~kitaru.store.StateStore` contract is one ``POST
/api/v1/store/<operation>`` to a kitaru server, authenticated by an API key with the ``runner``
scope (``KITARU_API_KEY``), so a job holds that key instead of database credentials. The server
runs the operation on its own store, whose duties (atomic commits, leases, final statuses) hold
unchanged; errors come back as the same kitaru error classes. One httpx client per running event
loop, like the database stores.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from kitaru.errors import KitaruStoreError
from kitaru.remote import _store_rpc, _wire
from kitaru.store import ArtifactRecord, ExecutionRecord, JournalRecord
from kitaru.store._perloop import PerLoop

__all__ = ["HttpStateStore"]

_TIMEOUT = 60.0


class HttpStateStore:
    """The StateStore contract over a kitaru server's API."""

    inline: ClassVar[bool] = False

    def __init__(self, url: str, key: str | None = None) -> None:
        from kitaru.remote._login import api_key_from_env

        self.url = url.rstrip("/")
        self._key = key or api_key_from_env(self.url)
        self._clients: PerLoop[Any] = PerLoop(self._open, _close)

    def __repr__(self) -> str:
        return f"<HttpStateStore {self.url}>"  # never the key

    async def _open(self) -> Any:
        import httpx

        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self._key}"}, timeout=_TIMEOUT
        )

    async def _call(self, operation: str, **arguments: Any) -> Any:
        import httpx

        client = await self._clients.get()
        body = _store_rpc.encode_arguments(operation, arguments)
        try:
            response = await client.post(f"/api/v1/store/{operation}", json=body)
        except httpx.HTTPError as exc:
            raise KitaruStoreError(
                f"cannot reach the kitaru server {self.url} ({type(exc).__name__}: {exc}). Check that it "
                "runs (`kitaru status`) and that the URL is right."
            ) from None
        if response.status_code != 200:
            try:
                data = response.json()
            except ValueError:
                data = response.text
            raise _wire.error_from_json(data, response.status_code)
        return _store_rpc.decode_result(operation, response.json()["result"])

    async def create_execution(
        self,
        execution: ExecutionRecord,
        artifacts: Sequence[ArtifactRecord],
        records: Sequence[JournalRecord] = (),
    ) -> tuple[ExecutionRecord, bool]:
        result: tuple[ExecutionRecord, bool] = await self._call(
            "create_execution", execution=execution, artifacts=list(artifacts), records=list(records)
        )
        return result

    async def get_execution(self, exec_id: str) -> ExecutionRecord | None:
        result: ExecutionRecord | None = await self._call("get_execution", exec_id=exec_id)
        return result

    async def match_execution_ids(self, prefix: str, limit: int = 2) -> list[str]:
        result: list[str] = await self._call("match_execution_ids", prefix=prefix, limit=limit)
        return result

    async def list_executions(
        self,
        *,
        flow: str | None = None,
        status: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[ExecutionRecord]:
        result: list[ExecutionRecord] = await self._call(
            "list_executions", flow=flow, status=status, limit=limit, before=before
        )
        return result

    async def acquire_lease(
        self,
        exec_id: str,
        owner: str,
        ttl: float,
        *,
        allowed_statuses: Iterable[str],
        set_status: str | None = "running",
    ) -> ExecutionRecord:
        result: ExecutionRecord = await self._call(
            "acquire_lease",
            exec_id=exec_id,
            owner=owner,
            ttl=ttl,
            allowed_statuses=sorted(allowed_statuses),
            set_status=set_status,
        )
        return result

    async def list_recoverable(self, *, limit: int = 100) -> list[ExecutionRecord]:
        result: list[ExecutionRecord] = await self._call("list_recoverable", limit=limit)
        return result

    async def renew_leases(self, owner: str, exec_ids: Sequence[str], ttl: float) -> dict[str, str]:
        result: dict[str, str] = await self._call(
            "renew_leases", owner=owner, exec_ids=list(exec_ids), ttl=ttl
        )
        return result

    async def commit(
        self,
        exec_id: str,
        records: Sequence[JournalRecord],
        artifacts: Sequence[ArtifactRecord] = (),
        *,
        owner: str | None = None,
        status: str | None = None,
        error: str | None = None,
        result_artifact: str | None = None,
        release_lease: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> str | None:
        result: str | None = await self._call(
            "commit",
            exec_id=exec_id,
            records=list(records),
            artifacts=list(artifacts),
            owner=owner,
            status=status,
            error=error,
            result_artifact=result_artifact,
            release_lease=release_lease,
            metadata=metadata,
        )
        return result

    async def suspend(self, exec_id: str, owner: str, waiting_on: Sequence[str]) -> bool:
        result: bool = await self._call("suspend", exec_id=exec_id, owner=owner, waiting_on=list(waiting_on))
        return result

    async def answer_wait(
        self,
        exec_id: str,
        record: JournalRecord,
        artifact: ArtifactRecord,
        *,
        owner: str,
        ttl: float,
        take_lease: bool,
    ) -> bool:
        result: bool = await self._call(
            "answer_wait",
            exec_id=exec_id,
            record=record,
            artifact=artifact,
            owner=owner,
            ttl=ttl,
            take_lease=take_lease,
        )
        return result

    async def cancel(self, exec_id: str) -> ExecutionRecord:
        result: ExecutionRecord = await self._call("cancel", exec_id=exec_id)
        return result

    async def read_journal(self, exec_id: str) -> list[JournalRecord]:
        result: list[JournalRecord] = await self._call("read_journal", exec_id=exec_id)
        return result

    async def get_artifact(self, artifact_id: str) -> ArtifactRecord | None:
        result: ArtifactRecord | None = await self._call("get_artifact", artifact_id=artifact_id)
        return result

    async def list_artifacts(
        self, exec_id: str, *, name: str | None = None, type: str | None = None
    ) -> list[ArtifactRecord]:
        result: list[ArtifactRecord] = await self._call(
            "list_artifacts", exec_id=exec_id, name=name, type=type
        )
        return result

    async def aclose(self) -> None:
        await self._clients.aclose()


async def _close(client: Any) -> None:
    await client.aclose()
