"""Which image an execution's Cloud Run tasks run on: the job of its configuration with its deployed
version's image, else its flow's own (``@flow(image=...)``), else the stack's. A run's overrides
cannot change the image, so another image is another job."""

from __future__ import annotations

from kitaru_stack_gcp import GcpStack
from kitaru_stack_gcp._orchestrator import CloudRunOrchestrator


def _orchestrator() -> CloudRunOrchestrator:
    stack = GcpStack(
        "prod",
        state="postgresql://kitaru@db/kitaru",
        artifacts="gs://bucket/prefix",
        region="europe-west1",
        image="acme/agents:now",
        project="acme",
        anonymous=True,
    )
    orchestrator = stack.orchestrator()
    assert isinstance(orchestrator, CloudRunOrchestrator)
    return orchestrator


def test_an_executions_own_image_runs_on_a_job_of_its_own() -> None:
    orchestrator = _orchestrator()
    flows = {"image": "acme/flow:1"}
    deployed = {
        "deployment": {"flow": "review", "version": 3, "image": "acme/agents:v3"},
        "image": "acme/flow:1",
    }
    assert orchestrator.job_body({}).template.template.containers[0].image == "acme/agents:now"
    assert orchestrator.job_body(flows).template.template.containers[0].image == "acme/flow:1"
    assert orchestrator.job_body(deployed).template.template.containers[0].image == "acme/agents:v3"
    names = {orchestrator.job_name_of(m) for m in ({}, flows, deployed)}
    assert len(names) == 3
    assert all(n.startswith("projects/acme/locations/europe-west1/jobs/kitaru-prod-") for n in names)
    # The stack's own image is the stack's job.
    assert orchestrator.job_name_of({"image": "acme/agents:now"}) == orchestrator.job_name
