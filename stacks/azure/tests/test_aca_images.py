"""Which image an execution's Container Apps replica runs on: the start template's container (which
replaces the job's) carries its deployed version's image, else its flow's own
(``@flow(image=...)``), else the stack's, else the job's."""

from __future__ import annotations

from typing import Any

from kitaru_stack_azure import AzureStack
from kitaru_stack_azure._jobs import ContainerAppsOrchestrator

JOB: dict[str, Any] = {
    "properties": {
        "configuration": {"triggerType": "Manual"},
        "template": {"containers": [{"name": "main", "image": "acme/job:1"}]},
    }
}


def _orchestrator(**keys: Any) -> ContainerAppsOrchestrator:
    stack = AzureStack(
        "prod",
        state="postgresql://kitaru@db/kitaru",
        artifacts="az://account/container/prefix",
        subscription_id="sub",
        resource_group="rg",
        job="agents",
        **keys,
    )
    orchestrator = stack.orchestrator()
    assert isinstance(orchestrator, ContainerAppsOrchestrator)
    return orchestrator


def _image(template: dict[str, Any]) -> str:
    [container] = template["containers"]
    return str(container["image"])


def test_the_start_template_carries_the_executions_own_image() -> None:
    orchestrator = _orchestrator(image="acme/agents:now")
    flows = {"image": "acme/flow:1"}
    deployed = {
        "deployment": {"flow": "review", "version": 3, "image": "acme/agents:v3"},
        "image": "acme/flow:1",
    }
    assert _image(orchestrator.start_template(JOB, "E1", 0, {})) == "acme/agents:now"
    assert _image(orchestrator.start_template(JOB, "E1", 0, flows)) == "acme/flow:1"
    assert _image(orchestrator.start_template(JOB, "E1", 0, deployed)) == "acme/agents:v3"
    # Without any, the job's own image.
    assert _image(_orchestrator().start_template(JOB, "E1", 0, {})) == "acme/job:1"
    assert _image(_orchestrator().start_template(JOB, "E1", 0, flows)) == "acme/flow:1"
