"""Which image an execution's ECS tasks run on: the task definition kitaru registers for it carries
its deployed version's image, else its flow's own (``@flow(image=...)``), else the stack's. ECS
cannot override a container's image per task, so another image is another definition."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from kitaru_stack_aws import AwsStack
from kitaru_stack_aws._ecs import EcsOrchestrator

from kitaru.errors import KitaruConfigError


def _orchestrator(**keys: Any) -> EcsOrchestrator:
    stack = AwsStack(
        "prod",
        state="postgresql://kitaru@db/kitaru",
        artifacts="s3://bucket/prefix",
        cluster="agents",
        subnets=["subnet-1"],
        security_groups=["sg-1"],
        **keys,
    )
    orchestrator = stack.orchestrator()
    assert isinstance(orchestrator, EcsOrchestrator)
    return orchestrator


def _image(body: dict[str, Any]) -> str:
    [container] = body["containerDefinitions"]
    return str(container["image"])


def test_an_executions_own_image_registers_a_task_definition_of_its_own() -> None:
    orchestrator = _orchestrator(image="acme/agents:now")
    stacks = orchestrator.task_definition_body({})
    flows = orchestrator.task_definition_body({"image": "acme/flow:1"})
    deployed = orchestrator.task_definition_body(
        {"deployment": {"flow": "review", "version": 3, "image": "acme/agents:v3"}, "image": "acme/flow:1"}
    )
    assert _image(stacks) == "acme/agents:now"
    assert _image(flows) == "acme/flow:1"
    assert _image(deployed) == "acme/agents:v3"
    # Each image is its own family: registering one never changes the definition another runs.
    assert len({stacks["family"], flows["family"], deployed["family"]}) == 3
    # The same image is the same family (found again, not registered twice).
    assert orchestrator.task_definition_body({"image": "acme/agents:now"})["family"] == stacks["family"]
    # A stack without an image still runs a flow that names its own.
    assert _image(_orchestrator().task_definition_body({"image": "acme/flow:1"})) == "acme/flow:1"


def test_a_stacks_own_task_definition_refuses_an_execution_with_another_image() -> None:
    orchestrator = _orchestrator(task_definition="agents:7", image="acme/agents:now")
    # No ECS call is needed to choose the stack's definition, so no client is passed.
    assert asyncio.run(orchestrator.task_definition(None, {})) == "agents:7"
    assert asyncio.run(orchestrator.task_definition(None, {"image": "acme/agents:now"})) == "agents:7"
    with pytest.raises(
        KitaruConfigError, match=r"own image 'acme/flow:1'.*fixes the image.*`task_definition`"
    ):
        asyncio.run(orchestrator.task_definition(None, {"image": "acme/flow:1"}))
    with pytest.raises(KitaruConfigError, match=r"own image 'acme/agents:v3'"):
        asyncio.run(orchestrator.task_definition(None, {"deployment": {"image": "acme/agents:v3"}}))
    # Refused when the flow starts, before its execution exists.
    flow: Any = SimpleNamespace(name="review", image="acme/flow:1", deployment=None)
    with pytest.raises(KitaruConfigError, match=r"own image 'acme/flow:1'"):
        asyncio.run(orchestrator.prepare(flow))
