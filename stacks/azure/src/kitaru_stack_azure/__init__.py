"""kitaru's Azure stack: artifacts in Azure Blob Storage (``az://container/prefix``), state in SQLite
or PostgreSQL, and, once the stack names a Container Apps ``job`` or ``environment``, flows run as
Container Apps job executions (one per execution run, ``kitaru worker run <exec_id>``).

Config keys of an ``azure`` stack (besides ``state`` and ``artifacts``) for the store:
``connection_string``, ``account_url``, ``account_name``, ``account_key``, ``sas_token`` (none of
them: ``DefaultAzureCredential``), ``part_size``, ``retries``, ``retry_base_delay``,
``retry_max_delay``, ``connect_timeout``, ``read_timeout``; for Container Apps jobs see
:class:`AzureStack`. The SDKs (azure-storage-blob, azure-mgmt-appcontainers, azure-identity) are
imported on first use, never by ``import kitaru``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from kitaru.errors import KitaruConfigError
from kitaru.stack import BaseStack, ObjectStoreStack, Orchestrator

if TYPE_CHECKING:
    from kitaru_stack_azure._jobs import ContainerAppsOrchestrator
    from kitaru_stack_azure._store import AzureBlobArtifactStore

__all__ = ["AzureStack", "azure_artifact_store"]


class AzureStack(ObjectStoreStack):
    """The ``azure`` stack type: artifacts live in the Blob container named by ``artifacts`` (an
    ``az://`` URI, required; the store's keys choose the account and credential). Flows run in the
    calling process, unless the stack names a Container Apps ``job``, ``environment`` or ``image``:
    then each execution run is an execution of a manual-trigger Container Apps job running
    ``kitaru worker run <exec_id>`` (:mod:`kitaru_stack_azure._jobs`). Its keys:

    - ``subscription_id`` and ``resource_group``: where the job lives (both required);
    - ``job``: an existing manual-trigger job to start (its container, image, resources, secrets
      and retry limit are kept unless the keys below say otherwise); or
    - ``environment``: the resource ID of a Container Apps environment kitaru creates its own job
      in (named ``kitaru-<stack>-<hash>`` of its template), with ``location`` (the region);
    - ``image``: the container image (required with ``environment``): Python with kitaru[azure]
      and the flows' dependencies;
    - ``cpu`` / ``memory``: the container's resources (e.g. ``1.0`` and ``"2Gi"``);
    - ``identity``: the resource ID of a user-assigned managed identity the job runs as (and pulls
      ``registry`` with);
    - ``registry``: the registry server the image comes from (e.g. ``myacr.azurecr.io``);
    - ``max_retries``: the job's ``replicaRetryLimit`` for infrastructure failures (default 3; a
      flow's own failure is never retried);
    - ``replica_timeout``: seconds one replica may run (default 86400);
    - ``env``: environment variables for the worker;
    - ``code``: ``archive`` (default) or ``image`` (the image holds the flows' code);
    - ``worker_command``: how the image runs kitaru (default ``["kitaru"]``);
    - ``arm_endpoint_url``: the Azure Resource Manager endpoint (default Azure's; tests).

    Credentials: azure-identity's ``DefaultAzureCredential`` (environment, workload or managed
    identity, Azure CLI login...).
    """

    type = "azure"
    scheme = "az"
    keys: ClassVar[dict[str, Any]] = {
        **BaseStack.keys,
        "subscription_id": str,
        "resource_group": str,
        "job": str,
        "environment": str,
        "location": str,
        "image": str,
        "cpu": float,
        "memory": str,
        "identity": str,
        "registry": str,
        "max_retries": int,
        "replica_timeout": int,
        "env": dict[str, str],
        "code": Literal["archive", "image"],
        "worker_command": list[str],
        "arm_endpoint_url": str,
    }

    def __init__(
        self,
        name: str,
        state: str | None = None,
        artifacts: str | None = None,
        *,
        subscription_id: str | None = None,
        resource_group: str | None = None,
        job: str | None = None,
        environment: str | None = None,
        location: str | None = None,
        image: str | None = None,
        cpu: float | None = None,
        memory: str | None = None,
        identity: str | None = None,
        registry: str | None = None,
        max_retries: int = 3,
        replica_timeout: int = 86400,
        env: dict[str, str] | None = None,
        code: str = "archive",
        worker_command: list[str] | None = None,
        arm_endpoint_url: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(name, state=state, artifacts=artifacts, **options)
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.job = job
        self.environment = environment
        self.location = location
        self.image = image
        self.cpu = None if cpu is None else float(cpu)
        self.memory = memory
        self.identity = identity
        self.registry = registry
        self.max_retries = int(max_retries)
        self.replica_timeout = int(replica_timeout)
        self.env = dict(env or {})
        self.code = code
        self.worker_command = list(worker_command or ["kitaru"])
        self.arm_endpoint_url = arm_endpoint_url

    def container_apps_keys(self) -> dict[str, Any]:
        """The Container Apps keys as configured (for the worker's environment)."""
        return {
            "subscription_id": self.subscription_id,
            "resource_group": self.resource_group,
            "job": self.job,
            "environment": self.environment,
            "location": self.location,
            "image": self.image,
            "cpu": self.cpu,
            "memory": self.memory,
            "identity": self.identity,
            "registry": self.registry,
            "max_retries": self.max_retries,
            "replica_timeout": self.replica_timeout,
            "code": self.code,
            "arm_endpoint_url": self.arm_endpoint_url,
        }

    def orchestrator(self) -> Orchestrator | ContainerAppsOrchestrator:
        """In this process without Container Apps keys; else Container Apps jobs, which need
        stores every replica reaches, a subscription, a resource group and a job to start."""
        if not (self.job or self.environment or self.image):
            return super().orchestrator()
        from kitaru._remote_jobs import refuse_local_stores

        refuse_local_stores(self, "Container Apps jobs", "its replicas")
        where = f"in its table (`kitaru stack show {self.name}` shows where it is declared)"
        for key, example in (
            ("subscription_id", "00000000-0000-0000-0000-000000000000"),
            ("resource_group", "my-resource-group"),
        ):
            if not getattr(self, key):
                raise KitaruConfigError(
                    f"stack {self.name!r} (azure) runs flows as Container Apps jobs but has no "
                    f"`{key}`: the jobs live in a subscription's resource group. Set "
                    f'`{key} = "{example}"` {where} (`az account show`, `az group list`).'
                )
        if not (self.job or self.environment):
            raise KitaruConfigError(
                f"stack {self.name!r} (azure) names an `image` but neither a Container Apps `job` to "
                'start nor an `environment` to create one in. Set `job = "JOB_NAME"` (a job with '
                'manual trigger: `az containerapp job list`) or `environment = "/subscriptions/SUB/'
                f'resourceGroups/RG/providers/Microsoft.App/managedEnvironments/ENV"` {where}.'
            )
        if not self.job and not self.image:
            raise KitaruConfigError(
                f"stack {self.name!r} (azure) creates a Container Apps job in `environment` but has no "
                "`image`: the job needs the image that runs the worker (Python with kitaru[azure] and "
                f'the flows\' dependencies). Set `image = "REGISTRY.azurecr.io/IMAGE:TAG"` {where}.'
            )
        if not self.job and not self.location:
            raise KitaruConfigError(
                f"stack {self.name!r} (azure) creates a Container Apps job in `environment` but has no "
                f'`location`: set the environment\'s region, e.g. `location = "westeurope"` {where} '
                "(`az containerapp env show -n ENV -g RG --query location`)."
            )
        from kitaru_stack_azure._jobs import ContainerAppsOrchestrator

        return ContainerAppsOrchestrator(self)


def azure_artifact_store(uri: str, **options: Any) -> AzureBlobArtifactStore:
    """Open the Azure Blob artifact store rooted at an ``az://container/prefix`` URI."""
    from kitaru_stack_azure._store import AzureBlobArtifactStore

    return AzureBlobArtifactStore(uri, **options)


#: The keys the store takes, checked when a stack is read from its config file.
azure_artifact_store.keys = {  # type: ignore[attr-defined]
    "connection_string": str,
    "account_url": str,
    "account_name": str,
    "account_key": str,
    "sas_token": str,
    "part_size": int,
    "retries": int,
    "retry_base_delay": float,
    "retry_max_delay": float,
    "connect_timeout": float,
    "read_timeout": float,
}
