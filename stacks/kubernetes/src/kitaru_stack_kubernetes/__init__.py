"""kitaru's ``kubernetes`` stack type: each execution runs as Kubernetes Jobs.

``flow.run()`` / ``await flow.start()`` on a kubernetes stack create the execution in the stack's
shared state store, ship the flow's code to its artifact store (unless ``code = "image"``) and
submit a ``batch/v1`` Job running ``kitaru worker run <exec_id>``. A waiting execution's Job exits;
an answer submits a new Job that resumes from the journal. See :mod:`._orchestrator` and
stacks/kubernetes/README.md; every key is documented in stacks.example.toml.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from kitaru.stack import BaseStack

from ._orchestrator import KubernetesOrchestrator

__all__ = ["KubernetesOrchestrator", "KubernetesStack"]

#: How the worker gets the flow's code: from an archive uploaded to the artifact store (default),
#: or from the image itself (nothing is uploaded).
CodeSource = Literal["archive", "image"]


class KubernetesStack(BaseStack):
    """The ``kubernetes`` stack type: executions run as Kubernetes Jobs.

    Keys, beyond ``state`` and ``artifacts`` (the Job each execution gets is built from them):

    - ``namespace``: the namespace the execution Jobs run in (default ``default``);
    - ``image``: the container image the Jobs run (kitaru with this stack's extras, Python);
    - ``image_pull_policy``: ``Always``, ``IfNotPresent`` or ``Never`` (default: the cluster's);
    - ``image_pull_secrets``: names of Secrets holding registry credentials;
    - ``code``: ``archive`` (default: the flow's source root is uploaded to the artifact store
      and unpacked by the worker) or ``image`` (the image already holds the code);
    - ``kubeconfig``: path of the kubeconfig file (default: ``$KUBECONFIG`` or ``~/.kube/config``,
      or the in-cluster service account);
    - ``context``: the kubeconfig context to use (default: its current context);
    - ``service_account``: the pod's service account (default: the namespace's ``default``);
    - ``resources``: the container's ``requests``/``limits`` (``{cpu = "500m", memory = "1Gi"}``);
    - ``node_selector``: node labels the pod must land on;
    - ``tolerations``: the pod's tolerations, as in a pod spec;
    - ``labels`` / ``annotations``: added to each Job and its pods;
    - ``env``: environment variables for the worker (name = value);
    - ``secret_env``: environment variables read from Secrets (name = ``"secret-name:key"``);
    - ``env_from_secrets``: Secrets whose every key becomes an environment variable;
    - ``backoff_limit``: how many infrastructure failures (crash, OOM, lost node) a Job retries
      (default 3; a flow's own failure is never retried by the platform);
    - ``ttl_seconds_after_finished``: how long a finished Job and its pods are kept (default 3600);
    - ``active_deadline_seconds``: a limit on one Job's run time (default: none);
    - ``worker_command``: how the image runs kitaru (default ``["kitaru"]``; the Job's command is
      this plus ``worker run <exec_id>``), e.g. ``["python", "-m", "kitaru.cli"]``.

    ``state`` and ``artifacts`` must be stores every pod reaches (PostgreSQL; S3, GCS, Azure):
    a SQLite file or a ``file://`` directory on the submitting machine is refused.

    Other keys go to the artifact store chosen by the ``artifacts`` URI (e.g. ``region`` for S3).
    """

    type = "kubernetes"
    keys: ClassVar[dict[str, Any]] = {
        **BaseStack.keys,
        "namespace": str,
        "image": str,
        "image_pull_policy": Literal["Always", "IfNotPresent", "Never"],
        "image_pull_secrets": list[str],
        "code": CodeSource,
        "kubeconfig": str,
        "context": str,
        "service_account": str,
        "resources": dict[Literal["requests", "limits"], dict[str, str]],
        "node_selector": dict[str, str],
        "tolerations": list[dict[str, Any]],
        "labels": dict[str, str],
        "annotations": dict[str, str],
        "env": dict[str, str],
        "secret_env": dict[str, str],
        "env_from_secrets": list[str],
        "backoff_limit": int,
        "ttl_seconds_after_finished": int,
        "active_deadline_seconds": int,
        "worker_command": list[str],
    }

    def __init__(
        self,
        name: str,
        state: str | None = None,
        artifacts: str | None = None,
        *,
        namespace: str = "default",
        image: str | None = None,
        image_pull_policy: str | None = None,
        image_pull_secrets: list[str] | None = None,
        code: CodeSource = "archive",
        kubeconfig: str | None = None,
        context: str | None = None,
        service_account: str | None = None,
        resources: dict[str, dict[str, str]] | None = None,
        node_selector: dict[str, str] | None = None,
        tolerations: list[dict[str, Any]] | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        secret_env: dict[str, str] | None = None,
        env_from_secrets: list[str] | None = None,
        backoff_limit: int = 3,
        ttl_seconds_after_finished: int = 3600,
        active_deadline_seconds: int | None = None,
        worker_command: list[str] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(name, state=state, artifacts=artifacts, **options)
        self.namespace = namespace
        self.image = image
        self.image_pull_policy = image_pull_policy
        self.image_pull_secrets = list(image_pull_secrets or [])
        self.code = code
        self.kubeconfig = kubeconfig
        self.context = context
        self.service_account = service_account
        self.resources = dict(resources or {})
        self.node_selector = dict(node_selector or {})
        self.tolerations = list(tolerations or [])
        self.labels = dict(labels or {})
        self.annotations = dict(annotations or {})
        self.env = dict(env or {})
        self.secret_env = dict(secret_env or {})
        self.env_from_secrets = list(env_from_secrets or [])
        self.backoff_limit = backoff_limit
        self.ttl_seconds_after_finished = ttl_seconds_after_finished
        self.active_deadline_seconds = active_deadline_seconds
        self.worker_command = list(worker_command or ["kitaru"])

    def orchestrator(self) -> KubernetesOrchestrator:
        """Runs executions as Jobs; refuses stores a pod cannot share with the submitter."""
        from kitaru._remote_jobs import refuse_local_stores

        refuse_local_stores(self, "Kubernetes Jobs", "the Jobs' pods")
        return KubernetesOrchestrator(self)
