"""The serializer chain: how kitaru turns values into bytes and back, preserving their type.

Serializers are tried in order; the first that accepts a value writes it and tags the bytes with its
own name and the value's type path (``module:qualname``), so loading gives back the same type:

1. ``json``       exactly JSON-native values (None, bool, int, float, str, and lists / str-keyed dicts
                  of those, nested). Tuples, sets and non-str keys are *not* JSON-native: they would
                  come back as something else, so they go further down the chain.
2. ``bytes``      bytes, bytearray, memoryview (stored raw; loaded as ``bytes`` or ``bytearray``).
3. ``pydantic``   pydantic models, through ``model_dump_json`` / ``model_validate_json``.
4. ``dataclass``  dataclass instances that survive a pydantic ``TypeAdapter`` round trip unchanged.
5. ``numpy``      numpy arrays without object dtype, in ``.npy`` format (only if numpy is imported).
6. ``cloudpickle`` anything else, unless pickle is switched off (``KITARU_ALLOW_PICKLE=0``).

Loading never unpickles when pickle is switched off. Optional libraries are only touched when the
value already comes from them, so this module imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kitaru.errors import KitaruConfigError, KitaruSerializationError

__all__ = ["Serialized", "dumps", "loads", "pickle_allowed", "type_path"]

_JSON_SCALARS = (str, int, float, bool, type(None))

#: Scripts that ran as ``__main__`` and were re-imported under a private name to resume them:
#: types stored as ``__main__:Name`` are looked up there.
MAIN_ALIASES: list[Any] = []


@dataclass(frozen=True, slots=True)
class Serialized:
    """Bytes written by one serializer, with what is needed to load them back."""

    serializer: str
    type_path: str
    data: bytes


def pickle_allowed() -> bool:
    """Whether values may be pickled and unpickled: ``kitaru.configure(allow_pickle=)``, else
    ``KITARU_ALLOW_PICKLE`` (default on)."""
    from kitaru.config import configured

    chosen = configured("allow_pickle")
    if chosen is not None:
        return bool(chosen)
    return os.environ.get("KITARU_ALLOW_PICKLE", "1").strip().lower() not in {"0", "false", "no"}


def type_path(tp: type) -> str:
    """``module:qualname`` of a type, the form stored beside every artifact."""
    return f"{tp.__module__}:{tp.__qualname__}"


def import_type(path: str) -> Any:
    """Import ``module:qualname`` back into the object it names."""
    module_name, _, qualname = path.partition(":")
    candidates: list[Any] = []
    if module_name == "__main__":
        candidates.extend(reversed(MAIN_ALIASES))
    try:
        candidates.append(importlib.import_module(module_name))
    except ImportError as exc:
        if not candidates:
            raise KitaruSerializationError(
                f"cannot import type {path!r} to load a stored value: {exc}. Make the module "
                "importable (run from the project directory, or install it) and try again."
            ) from exc
    for module in candidates:
        obj: Any = module
        try:
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise KitaruSerializationError(
        f"cannot load a stored value: module {module_name!r} has no {qualname!r}. The type was "
        "renamed or removed since the value was stored; restore it to load the value."
    )


def _is_json_native(value: Any) -> bool:
    tp = type(value)
    if tp in _JSON_SCALARS:
        return True
    if tp is list:
        return all(_is_json_native(v) for v in value)
    if tp is dict:
        return all(type(k) is str and _is_json_native(v) for k, v in value.items())
    return False


def _importable(tp: type) -> bool:
    """Whether loading can find ``tp`` by name; classes defined in a function body cannot be, so
    their instances go to cloudpickle, which carries the class along."""
    return "<locals>" not in tp.__qualname__


def _dump_json(value: Any) -> Serialized | None:
    if not _is_json_native(value):
        return None
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        data = text.encode()
    except UnicodeEncodeError:
        # A lone surrogate (a file name decoded with surrogateescape) is not UTF-8; as a \u escape
        # it is valid JSON that loads back to the same str.
        data = json.dumps(value, separators=(",", ":")).encode()
    return Serialized("json", type_path(type(value)), data)


def _dump_bytes(value: Any) -> Serialized | None:
    if isinstance(value, bytes | bytearray | memoryview):
        kind = bytearray if isinstance(value, bytearray) else bytes
        return Serialized("bytes", type_path(kind), bytes(value) if type(value) is not bytes else value)
    return None


def _dump_pydantic(value: Any) -> Serialized | None:
    pydantic = sys.modules.get("pydantic")
    if pydantic is None or not isinstance(value, pydantic.BaseModel) or not _importable(type(value)):
        return None
    return Serialized("pydantic", type_path(type(value)), value.model_dump_json().encode())


def _dump_dataclass(value: Any) -> Serialized | None:
    if not dataclasses.is_dataclass(value) or isinstance(value, type) or not _importable(type(value)):
        return None
    from pydantic import TypeAdapter

    try:
        adapter: Any = TypeAdapter(type(value))
        # warnings=False: a field holding the wrong type must not print pydantic's warning; the
        # comparison below sends such a value down the chain anyway.
        data = adapter.dump_json(value, warnings=False)
        if adapter.validate_json(data) != value:
            return None
    except Exception:
        # A field pydantic cannot describe: leave the value to the next serializer.
        return None
    return Serialized("dataclass", type_path(type(value)), data)


def _dump_numpy(value: Any) -> Serialized | None:
    np = sys.modules.get("numpy")
    if np is None or not isinstance(value, np.ndarray) or value.dtype.hasobject:
        return None
    buf = io.BytesIO()
    np.save(buf, value, allow_pickle=False)
    return Serialized("numpy", "numpy:ndarray", buf.getvalue())


def _dump_pickle(value: Any) -> Serialized | None:
    if not pickle_allowed():
        return None
    import cloudpickle

    return Serialized("cloudpickle", type_path(type(value)), cloudpickle.dumps(value))


_CHAIN: list[Callable[[Any], Serialized | None]] = [
    _dump_json,
    _dump_bytes,
    _dump_pydantic,
    _dump_dataclass,
    _dump_numpy,
    _dump_pickle,
]


def dumps(value: Any) -> Serialized:
    """Serialize ``value`` with the first serializer in the chain that accepts it."""
    for serializer in _CHAIN:
        try:
            result = serializer(value)
        except Exception as exc:
            raise KitaruSerializationError(
                f"cannot serialize a value of type {type(value).__qualname__}: {exc}"
            ) from exc
        if result is not None:
            return result
    raise KitaruSerializationError(
        f"cannot serialize a value of type {type(value).__qualname__}: it is not JSON-native, "
        "bytes, a pydantic model or a dataclass, and pickle is switched off. Return one of those "
        "types, or allow pickle (kitaru.configure(allow_pickle=True), or KITARU_ALLOW_PICKLE=1 when "
        "configure() does not say)."
    )


def loads(serializer: str, type_ref: str, data: bytes) -> Any:
    """Load bytes written by :func:`dumps` back into a value of the same type."""
    try:
        if serializer == "json":
            return json.loads(data)
        if serializer == "bytes":
            return bytearray(data) if type_ref == "builtins:bytearray" else bytes(data)
        if serializer == "pydantic":
            return import_type(type_ref).model_validate_json(data)
        if serializer == "dataclass":
            from pydantic import TypeAdapter

            return TypeAdapter(import_type(type_ref)).validate_json(data)
        if serializer == "numpy":
            import numpy as np

            return np.load(io.BytesIO(data), allow_pickle=False)
        if serializer == "cloudpickle":
            if not pickle_allowed():
                raise KitaruConfigError(
                    "this value was stored with pickle, and pickle is switched off "
                    "(KITARU_ALLOW_PICKLE=0). Set KITARU_ALLOW_PICKLE=1 to load it if you "
                    "trust the store."
                )
            import cloudpickle

            return cloudpickle.loads(data)
    except (KitaruSerializationError, KitaruConfigError):
        raise
    except Exception as exc:
        raise KitaruSerializationError(
            f"cannot load a value stored by the {serializer!r} serializer as {type_ref}: {exc}"
        ) from exc
    raise KitaruSerializationError(
        f"unknown serializer {serializer!r}: the value was written by a newer or extended kitaru. "
        "Upgrade kitaru, or install the plugin that wrote it."
    )
