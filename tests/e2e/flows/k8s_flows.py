"""Flows the Kubernetes e2e tests submit as Jobs (shipped to the pods as a code archive of this
directory). Each checkpoint run appends a line to the file named by its ``count_file`` argument,
outside kitaru, so a test counts real runs across pods; ``marks`` is a directory where the slow
parts say where they are.

    eight(count_file, marks)   8 checkpoints; the 5th marks ``slow`` and sleeps until ``go`` exists
    boom(count_file)           a checkpoint, then the flow raises
    asks(count_file)           a checkpoint, a wait named ``go`` (bool), a checkpoint
    sleepy(count_file, marks)  a checkpoint that marks ``started`` and sleeps
    own_image(count_file)      a checkpoint, on its own job image (``@flow(image=OWN_IMAGE)``)
    isolated(count_file, marks)  an isolated checkpoint (a job of its own) that marks
                               ``own-job-started`` and holds until ``release`` exists
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import kitaru
from kitaru import checkpoint, flow


def count(count_file: str, line: str) -> None:
    with open(count_file, "a") as fh:
        fh.write(line + "\n")


@checkpoint
def step(i: int, count_file: str, marks: str) -> int:
    count(count_file, f"step {i}")
    if i == 5:
        (Path(marks) / "slow").write_text("5")
        deadline = time.monotonic() + 120
        while not (Path(marks) / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return i


@flow
def eight(count_file: str, marks: str) -> int:
    return sum(step(i, count_file, marks) for i in range(1, 9))


@checkpoint
def before(count_file: str) -> str:
    count(count_file, "before")
    return "ok"


@flow
def boom(count_file: str) -> str:
    before(count_file)
    raise ValueError("the flow itself is broken")


@checkpoint
def after(count_file: str, answer: bool) -> str:
    count(count_file, "after")
    return f"answered {answer}"


@flow
def asks(count_file: str) -> str:
    before(count_file)
    answer = kitaru.wait(name="go", question="Go on?", schema=bool)
    return after(count_file, answer)


@checkpoint
def slow(count_file: str, marks: str) -> None:
    count(count_file, "slow")
    (Path(marks) / "started").write_text("1")
    time.sleep(120)


@flow
def sleepy(count_file: str, marks: str) -> str:
    slow(count_file, marks)
    return "never"


#: The image ``own_image`` names (the test doubles run the worker whatever the image).
OWN_IMAGE = "kitaru-worker:own"


@flow(image=OWN_IMAGE)
def own_image(count_file: str) -> str:
    return before(count_file)


@checkpoint(runtime="isolated")
def own_job(count_file: str, marks: str) -> dict[str, Any]:
    """Runs in a job of its own: says where (its pod's name, its pid), then holds until ``release``."""
    count(count_file, "own_job")
    (Path(marks) / "own-job-started").write_text(os.environ.get("HOSTNAME", ""))
    deadline = time.monotonic() + 120
    while not (Path(marks) / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"pod": os.environ.get("HOSTNAME", ""), "pid": os.getpid()}


@flow
def isolated(count_file: str, marks: str) -> dict[str, Any]:
    out = own_job(count_file, marks)
    return {**out, "parent_pod": os.environ.get("HOSTNAME", ""), "parent_pid": os.getpid()}
