"""kitaru's GCP stack: artifacts in Google Cloud Storage (``gs://bucket/prefix``), state in SQLite or
PostgreSQL, and flows run as Cloud Run jobs once the stack names a ``region`` and an ``image``.

Config keys of a ``gcp`` stack (besides ``state`` and ``artifacts``): for the store
``endpoint_url``, ``project``, ``credentials_file``, ``anonymous``, ``part_size``, ``retries``,
``retry_base_delay``, ``retry_max_delay``, ``timeout``; for Cloud Run (see :class:`GcpStack`)
``region``, ``image``, ``service_account``, ``max_retries``, ``task_timeout``, ``cpu``, ``memory``,
``env``, ``code``, ``worker_command``, ``run_endpoint_url``. The SDKs (google-cloud-storage,
google-cloud-run) are imported on first use, never by ``import kitaru``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from kitaru.errors import KitaruConfigError
from kitaru.stack import BaseStack, ObjectStoreStack, Orchestrator

if TYPE_CHECKING:
    from kitaru_stack_gcp._orchestrator import CloudRunOrchestrator
    from kitaru_stack_gcp._store import GcsArtifactStore

__all__ = ["GcpStack", "gcs_artifact_store"]

#: How the worker gets the flow's code: an archive uploaded to the bucket, or the image itself.
CodeSource = Literal["archive", "image"]


class GcpStack(ObjectStoreStack):
    """The ``gcp`` stack type: artifacts live in the GCS bucket named by ``artifacts`` (a ``gs://``
    URI, required; the store's keys configure the GCS client). Flows run in the calling process,
    unless the stack names a Cloud Run ``region`` or ``image``: then each execution run is an
    execution of a Cloud Run job running ``kitaru worker run <exec_id>``
    (:mod:`kitaru_stack_gcp._orchestrator`). Its keys:

    - ``region``: the Cloud Run region (required), e.g. ``europe-west1``; the project is the
      store's ``project`` key, else the credentials';
    - ``image``: the container image (required): Python with kitaru and the flows' dependencies;
    - ``service_account``: the identity the tasks run as (default: the project's compute account);
    - ``max_retries``: task retries on infrastructure failures (default 3; a flow's own failure is
      never retried);
    - ``task_timeout``: seconds one task may run (default 86400);
    - ``cpu`` / ``memory``: the container's limits (``"1"``, ``"2Gi"``; default: Cloud Run's);
    - ``env``: environment variables for the worker;
    - ``code``: ``archive`` (default) or ``image`` (the image holds the flows' code);
    - ``worker_command``: how the image runs kitaru (default ``["kitaru"]``);
    - ``run_endpoint_url``: the Cloud Run Admin API endpoint (default: Google's; tests).

    Credentials: ``credentials_file`` (a service account key), else Application Default
    Credentials; ``anonymous = true`` sends none.
    """

    type = "gcp"
    scheme = "gs"
    keys: ClassVar[dict[str, Any]] = {
        **BaseStack.keys,
        "region": str,
        "image": str,
        "service_account": str,
        "max_retries": int,
        "task_timeout": int,
        "cpu": str,
        "memory": str,
        "env": dict[str, str],
        "code": CodeSource,
        "worker_command": list[str],
        "run_endpoint_url": str,
    }

    def __init__(
        self,
        name: str,
        state: str | None = None,
        artifacts: str | None = None,
        *,
        region: str | None = None,
        image: str | None = None,
        service_account: str | None = None,
        max_retries: int = 3,
        task_timeout: int = 86400,
        cpu: str | None = None,
        memory: str | None = None,
        env: dict[str, str] | None = None,
        code: CodeSource = "archive",
        worker_command: list[str] | None = None,
        run_endpoint_url: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(name, state=state, artifacts=artifacts, **options)
        self.region = region
        self.image = image
        self.service_account = service_account
        self.max_retries = max_retries
        self.task_timeout = task_timeout
        self.cpu = cpu
        self.memory = memory
        self.env = dict(env or {})
        self.code = code
        self.worker_command = list(worker_command or ["kitaru"])
        self.run_endpoint_url = run_endpoint_url

    def cloud_run_keys(self) -> dict[str, Any]:
        """The Cloud Run keys as configured (for the worker's environment)."""
        return {
            "region": self.region,
            "image": self.image,
            "service_account": self.service_account,
            "max_retries": self.max_retries,
            "task_timeout": self.task_timeout,
            "cpu": self.cpu,
            "memory": self.memory,
            "code": self.code,
            "run_endpoint_url": self.run_endpoint_url,
        }

    def orchestrator(self) -> Orchestrator | CloudRunOrchestrator:
        """In this process without Cloud Run keys; else Cloud Run jobs, which need stores every
        task reaches and both a region and an image."""
        if self.region is None and self.image is None:
            return super().orchestrator()
        from kitaru._remote_jobs import refuse_local_stores

        refuse_local_stores(self, "Cloud Run jobs", "Cloud Run tasks")
        where = f"(`kitaru stack show {self.name}` shows where it is declared)"
        if not self.region:
            raise KitaruConfigError(
                f"stack {self.name!r} (gcp) names an `image` but no `region`: Cloud Run jobs need "
                f'one. Set `region = "europe-west1"` (the Cloud Run region) in its table {where}.'
            )
        if not self.image:
            raise KitaruConfigError(
                f"stack {self.name!r} (gcp) runs flows on Cloud Run (region {self.region}) but has no "
                "`image`: the jobs need the image that runs the worker (Python with kitaru and the "
                "flows' dependencies). Set "
                f'`image = "REGION-docker.pkg.dev/PROJECT/REPO/IMAGE:TAG"` {where}.'
            )
        from kitaru_stack_gcp._orchestrator import CloudRunOrchestrator

        return CloudRunOrchestrator(self)


def gcs_artifact_store(uri: str, **options: Any) -> GcsArtifactStore:
    """Open the GCS artifact store rooted at a ``gs://bucket/prefix`` URI."""
    from kitaru_stack_gcp._store import GcsArtifactStore

    return GcsArtifactStore(uri, **options)


#: The keys the store takes, checked when a stack is read from its config file.
gcs_artifact_store.keys = {  # type: ignore[attr-defined]
    "endpoint_url": str,
    "project": str,
    "credentials_file": str,
    "anonymous": bool,
    "part_size": int,
    "retries": int,
    "retry_base_delay": float,
    "retry_max_delay": float,
    "timeout": float,
}
