"""A state store reached over HTTP: ``state = "https://host:port"`` in a stack.

Each operation of the :class:`~kitaru.store.StateStore` contract is one ``POST
/api/v1/store/<operation>`` to a kitaru server, authenticated by an API key with the ``runner``
scope (``KITARU_API_KEY``), so a job holds that key instead of database credentials. The server
runs the operation on its own store, whose duties (atomic commits, leases, final statuses) hold
unchanged; errors come back as the same kitaru error classes. One httpx client per running event
loop, like the database stores.

It also keeps the side contracts flows use: :class:`~kitaru.store.CatalogStore` (so checkpoints
in remote jobs use the cache and ``artifacts list --tag`` finds their saves) and
:class:`~kitaru.store.SecretStore` (``kitaru.secret()``): secrets travel as ciphertext only, the
key (``KITARU_SECRETS_KEY``) stays in the worker; setting or deleting one needs an ``admin`` key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from kitaru.errors import KitaruStoreError
from kitaru.remote import _store_rpc, _wire
from kitaru.store import (
    ArtifactRecord,
    CacheEntry,
    DeploymentRecord,
    ExecutionRecord,
    JournalRecord,
    SecretRecord,
    TagMove,
    TagRecord,
    TagRequest,
)
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
        version: int | None = None,
        before: str | None = None,
    ) -> list[ExecutionRecord]:
        result: list[ExecutionRecord] = await self._call(
            "list_executions", flow=flow, status=status, limit=limit, version=version, before=before
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

    async def read_journal(self, exec_id: str, after: int = 0) -> list[JournalRecord]:
        result: list[JournalRecord] = await self._call("read_journal", exec_id=exec_id, after=after)
        return result

    async def read_wait(self, exec_id: str, name: str) -> list[JournalRecord]:
        result: list[JournalRecord] = await self._call("read_wait", exec_id=exec_id, name=name)
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

    async def create_deployment(
        self, record: DeploymentRecord, *, tag: str | None = None, weight: int | None = None
    ) -> tuple[DeploymentRecord, list[TagMove]]:
        result: tuple[DeploymentRecord, list[TagMove]] = await self._call(
            "create_deployment", record=record, tag=tag, weight=weight
        )
        return result

    async def get_deployment(self, flow: str, version: int) -> DeploymentRecord | None:
        result: DeploymentRecord | None = await self._call("get_deployment", flow=flow, version=version)
        return result

    async def list_deployments(self, flow: str | None = None) -> list[DeploymentRecord]:
        result: list[DeploymentRecord] = await self._call("list_deployments", flow=flow)
        return result

    async def list_tags(self, flow: str | None = None) -> list[TagRecord]:
        result: list[TagRecord] = await self._call("list_tags", flow=flow)
        return result

    async def move_tags(self, flow: str, requests: Sequence[TagRequest], *, who: str) -> list[TagMove]:
        result: list[TagMove] = await self._call("move_tags", flow=flow, requests=list(requests), who=who)
        return result

    async def tag_history(self, flow: str, tag: str | None = None) -> list[TagMove]:
        result: list[TagMove] = await self._call("tag_history", flow=flow, tag=tag)
        return result

    # -- CatalogStore --------------------------------------------------------------------------

    async def get_cache_entry(self, key: str) -> CacheEntry | None:
        result: CacheEntry | None = await self._call("get_cache_entry", key=key)
        return result

    async def put_cache_entry(self, entry: CacheEntry) -> CacheEntry:
        result: CacheEntry = await self._call("put_cache_entry", entry=entry)
        return result

    async def clear_cache(self, flow: str | None = None) -> int:
        result: int = await self._call("clear_cache", flow=flow)
        return result

    async def list_cache_entries(self, flow: str | None = None) -> list[CacheEntry]:
        result: list[CacheEntry] = await self._call("list_cache_entries", flow=flow)
        return result

    async def find_artifacts(self, *, tag: str, limit: int = 100) -> list[ArtifactRecord]:
        result: list[ArtifactRecord] = await self._call("find_artifacts", tag=tag, limit=limit)
        return result

    # -- SecretStore (ciphertext only) --------------------------------------------------------

    async def put_secret(self, name: str, ciphertext: bytes) -> SecretRecord:
        result: SecretRecord = await self._call("put_secret", name=name, ciphertext=ciphertext)
        return result

    async def get_secret(self, name: str) -> SecretRecord | None:
        result: SecretRecord | None = await self._call("get_secret", name=name)
        return result

    async def list_secrets(self) -> list[SecretRecord]:
        result: list[SecretRecord] = await self._call("list_secrets")
        return result

    async def delete_secret(self, name: str) -> bool:
        result: bool = await self._call("delete_secret", name=name)
        return result

    async def aclose(self) -> None:
        await self._clients.aclose()


async def _close(client: Any) -> None:
    await client.aclose()
