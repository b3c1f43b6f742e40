"""kitaru's ``kubernetes`` stack type.

A Kubernetes stack will run one Job per execution: a waiting execution's Job exits, and an answer
starts a new Job that replays the journal. That orchestrator comes in a later release: **for now,
flows on a kubernetes stack still run in the calling process**, exactly as on the ``local`` stack.
What the stack does already is pair a state store with any artifact store by URI (``state``,
``artifacts``) and accept, and check, the keys its orchestrator will use.
"""

from __future__ import annotations

from typing import Any, ClassVar

from kitaru.stack import BaseStack

__all__ = ["KubernetesStack"]


class KubernetesStack(BaseStack):
    """The ``kubernetes`` stack type (flows run in-process until its orchestrator lands).

    Keys, beyond ``state`` and ``artifacts``:

    - ``namespace``: the namespace the execution Jobs run in (default ``default``);
    - ``image``: the container image the Jobs run (it must have the flow's code and kitaru);
    - ``kubeconfig``: path of the kubeconfig file (default: ``$KUBECONFIG`` or ``~/.kube/config``,
      or the in-cluster service account);
    - ``context``: the kubeconfig context to use (default: its current context).

    Other keys go to the artifact store chosen by the ``artifacts`` URI (e.g. ``region`` for S3).
    """

    type = "kubernetes"
    keys: ClassVar[dict[str, Any]] = {
        **BaseStack.keys,
        "namespace": str,
        "image": str,
        "kubeconfig": str,
        "context": str,
    }

    def __init__(
        self,
        name: str,
        state: str | None = None,
        artifacts: str | None = None,
        *,
        namespace: str = "default",
        image: str | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(name, state=state, artifacts=artifacts, **options)
        self.namespace = namespace
        self.image = image
        self.kubeconfig = kubeconfig
        self.context = context
