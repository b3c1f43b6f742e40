"""What ``KitaruClient`` returns is typed precisely: no ``Any`` in its return types, so a user's
type checker catches a misuse (``artifact.load().foo`` must be narrowed first)."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

from kitaru import client

_ANY = re.compile(r"\bAny\b")

# The client's two namespaces, and every view they hand out.
_RETURNED = [
    client._Executions,
    client._Artifacts,
    client.Execution,
    client.CheckpointCall,
    client.Wait,
    client.LogEntry,
    client.Recovery,
    client.Artifact,
    client.PendingWait,
    client.CheckpointAttempt,
    client.FailureInfo,
    client.ExecutionHandle,
]


def _return_annotations(cls: type) -> dict[str, str]:
    """The return annotation (as written) of each public method and property of ``cls``."""
    found: dict[str, str] = {}
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        fn = member.fget if isinstance(member, property) else member
        if inspect.isfunction(fn):
            found[f"{cls.__name__}.{name}"] = str(inspect.signature(fn).return_annotation)
    return found


@pytest.mark.parametrize("cls", _RETURNED, ids=lambda c: c.__name__)
def test_no_any_in_what_the_client_returns(cls: type) -> None:
    annotations = _return_annotations(cls)
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if not f.name.startswith("_"):
                annotations[f"{cls.__name__}.{f.name}"] = str(f.type)
    assert annotations, f"{cls.__name__} has nothing to check"
    loose = {name: text for name, text in annotations.items() if _ANY.search(text)}
    assert not loose, f"Any in the client's return types: {loose}"


def test_artifact_values_are_objects_and_json_is_json() -> None:
    """``load()`` can return any value at all (``object``: narrow it before use); ``as_json()``
    returns parsed JSON, and metadata holds JSON values."""
    assert inspect.signature(client.Artifact.load).return_annotation == "object"
    assert inspect.signature(client.Artifact.as_json).return_annotation == "JSONValue"
    from kitaru._client_views import JSONValue

    assert client.JSONValue is JSONValue
    fields = {f.name: f.type for f in dataclasses.fields(client.Execution)}
    assert fields["metadata"] == "dict[str, JSONValue]"
