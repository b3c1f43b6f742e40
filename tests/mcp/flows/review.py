"""A flow for the MCP tests: a JSON checkpoint output, a pickled one, then a wait for a person.

Usage: python review.py  (prints the execution id and status)."""

from __future__ import annotations

from pydantic import BaseModel

import kitaru


class Secretive:
    """Neither JSON, pydantic nor a dataclass: stored with cloudpickle. Unpickling it writes a
    file named by KITARU_TEST_UNPICKLED, so a test sees whether anything loaded it."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_unpickled, ("loaded",))


def _unpickled(text: str) -> str:
    import os

    marker = os.environ.get("KITARU_TEST_UNPICKLED")
    if marker:
        with open(marker, "w") as fh:
            fh.write(text)
    return text


class Verdict(BaseModel):
    approve: bool
    note: str


@kitaru.checkpoint
def draft(topic: str) -> dict[str, str]:
    return {"topic": topic, "text": f"a draft about {topic}"}


@kitaru.checkpoint
def opaque() -> object:
    return Secretive()


@kitaru.flow
def review(topic: str) -> str:
    written = draft(topic)
    opaque()
    verdict = kitaru.wait(name="verdict", question="Publish this draft?", schema=Verdict)
    return f"{written['topic']}: {'published' if verdict.approve else 'dropped'} ({verdict.note})"


if __name__ == "__main__":
    handle = review.run("tea")
    print(handle.exec_id, handle.status)
