"""kitaru's AWS stack: artifacts in S3 (``s3://bucket/prefix``), state in SQLite or PostgreSQL, and,
with a ``cluster``, flows run as ECS tasks (one per execution run, ``kitaru worker run <exec_id>``).

Config keys of an ``aws`` stack (besides ``state`` and ``artifacts``) for S3: ``endpoint_url``,
``region``, ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``, ``profile``,
``part_size``, ``retries``, ``retry_base_delay``, ``retry_max_delay``, ``connect_timeout``,
``read_timeout``; for ECS: see :class:`AwsStack`. The SDK (aiobotocore) is imported on first use of
the store or the orchestrator, never by ``import kitaru``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from kitaru.errors import KitaruConfigError
from kitaru.stack import BaseStack, ObjectStoreStack, Orchestrator

if TYPE_CHECKING:
    from kitaru_stack_aws._ecs import EcsOrchestrator
    from kitaru_stack_aws._store import S3ArtifactStore

__all__ = ["AwsStack", "s3_artifact_store"]


class AwsStack(ObjectStoreStack):
    """The ``aws`` stack type: artifacts live in the S3 bucket named by ``artifacts`` (an ``s3://``
    URI, required; the S3 keys go to the store). Without ``cluster`` flows run in the calling
    process; with it, each execution runs as ECS tasks (:mod:`kitaru_stack_aws._ecs`).

    ECS keys (every one documented in stacks.example.toml):

    - ``cluster``: the ECS cluster the tasks run in (name or ARN); setting it turns ECS on;
    - ``task_definition``: a task definition to run (``family[:revision]`` or ARN); else kitaru
      registers one from ``image``, ``cpu``, ``memory``, ``execution_role_arn``, ``task_role_arn``,
      ``secret_env`` and ``log_group``;
    - ``container_name``: the container of ``task_definition`` that runs the worker (default ``worker``);
    - ``launch_type``: ``FARGATE`` (default) or ``EC2``; or ``capacity_provider`` (e.g. ``FARGATE_SPOT``);
    - ``subnets``, ``security_groups``, ``assign_public_ip``: the tasks' awsvpc network;
    - ``platform_version``: the Fargate platform version (default: ECS's ``LATEST``);
    - ``env``: environment variables for the worker (overrides, per task);
    - ``tags``: extra tags on each task (kitaru adds ``kitaru:execution`` and its own);
    - ``max_retries``: infrastructure failures retried in a row per execution (default 3);
    - ``code``: ``archive`` (default) or ``image``; ``worker_command`` (default ``["kitaru"]``);
    - ``ecs_endpoint_url``: an ECS-compatible endpoint (tests; default AWS's).
    """

    type = "aws"
    scheme = "s3"
    keys: ClassVar[dict[str, Any]] = {
        **BaseStack.keys,
        "cluster": str,
        "task_definition": str,
        "container_name": str,
        "image": str,
        "cpu": int,
        "memory": int,
        "execution_role_arn": str,
        "task_role_arn": str,
        "launch_type": Literal["FARGATE", "EC2"],
        "capacity_provider": str,
        "platform_version": str,
        "subnets": list[str],
        "security_groups": list[str],
        "assign_public_ip": bool,
        "env": dict[str, str],
        "secret_env": dict[str, str],
        "log_group": str,
        "tags": dict[str, str],
        "max_retries": int,
        "code": Literal["archive", "image"],
        "worker_command": list[str],
        "ecs_endpoint_url": str,
    }

    def __init__(
        self,
        name: str,
        state: str | None = None,
        artifacts: str | None = None,
        *,
        cluster: str | None = None,
        task_definition: str | None = None,
        container_name: str | None = None,
        image: str | None = None,
        cpu: int = 1024,
        memory: int = 2048,
        execution_role_arn: str | None = None,
        task_role_arn: str | None = None,
        launch_type: str = "FARGATE",
        capacity_provider: str | None = None,
        platform_version: str | None = None,
        subnets: list[str] | None = None,
        security_groups: list[str] | None = None,
        assign_public_ip: bool = False,
        env: dict[str, str] | None = None,
        secret_env: dict[str, str] | None = None,
        log_group: str | None = None,
        tags: dict[str, str] | None = None,
        max_retries: int = 3,
        code: str = "archive",
        worker_command: list[str] | None = None,
        ecs_endpoint_url: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(name, state=state, artifacts=artifacts, **options)
        self.cluster = cluster
        self.task_definition = task_definition
        self.container_name = container_name or "worker"
        self.image = image
        self.cpu = int(cpu)
        self.memory = int(memory)
        self.execution_role_arn = execution_role_arn
        self.task_role_arn = task_role_arn
        self.launch_type = launch_type
        self.capacity_provider = capacity_provider
        self.platform_version = platform_version
        self.subnets = list(subnets or [])
        self.security_groups = list(security_groups or [])
        self.assign_public_ip = bool(assign_public_ip)
        self.env = dict(env or {})
        self.secret_env = dict(secret_env or {})
        self.log_group = log_group
        self.tags = dict(tags or {})
        self.max_retries = int(max_retries)
        self.code = code
        self.worker_command = list(worker_command or ["kitaru"])
        self.ecs_endpoint_url = ecs_endpoint_url

    def orchestrator(self) -> Orchestrator | EcsOrchestrator:
        """In this process without a ``cluster``; else ECS tasks, which must share the state store."""
        if not self.cluster:
            return super().orchestrator()
        from kitaru._remote_jobs import refuse_local_stores

        refuse_local_stores(self, f"cluster {self.cluster!r}", "its ECS tasks")
        if self.launch_type == "FARGATE" and not self.capacity_provider and not self.subnets:
            raise KitaruConfigError(
                f"stack {self.name!r} (aws, cluster {self.cluster!r}) runs Fargate tasks, which need a "
                'network: set `subnets = ["subnet-..."]` and `security_groups = ["sg-..."]` in its '
                'table (`aws ec2 describe-subnets`), or `launch_type = "EC2"`.'
            )
        from kitaru_stack_aws._ecs import EcsOrchestrator

        return EcsOrchestrator(self)


def s3_artifact_store(uri: str, **options: Any) -> S3ArtifactStore:
    """Open the S3 artifact store rooted at an ``s3://bucket/prefix`` URI."""
    from kitaru_stack_aws._store import S3ArtifactStore

    return S3ArtifactStore(uri, **options)


#: The keys the store takes, checked when a stack is read from its config file.
s3_artifact_store.keys = {  # type: ignore[attr-defined]
    "endpoint_url": str,
    "region": str,
    "aws_access_key_id": str,
    "aws_secret_access_key": str,
    "aws_session_token": str,
    "profile": str,
    "part_size": int,
    "retries": int,
    "retry_base_delay": float,
    "retry_max_delay": float,
    "connect_timeout": float,
    "read_timeout": float,
}
