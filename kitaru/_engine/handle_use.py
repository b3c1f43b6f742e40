"""Code written for Kitaru 0.18 that treats a checkpoint's return value as a handle.

In 0.18 a checkpoint called inside a flow returned a handle, and flow code wrote
``draft = write_draft(topic).load()``. Here the call returns the value itself (deliberately:
no handle to unwrap), so that line fails with ``AttributeError: 'str' object has no attribute
'load'``. The value is not wrapped to catch this (every checkpoint call would pay for it, and
``isinstance``/``type()`` checks on outputs would change); instead, when such an
``AttributeError`` escapes the flow body, the runner turns it into a
:class:`~kitaru.errors.KitaruNotAHandleError` (still an ``AttributeError``) that names the
checkpoint and says to remove ``.load()``. The checkpoint is recognised by identity through the
execution's outputs index; a value the index cannot recognise (``None``, small numbers) keeps its
``AttributeError`` with a note saying the same.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from kitaru.errors import KitaruError, KitaruNotAHandleError

if TYPE_CHECKING:
    from .context import ExecutionContext

__all__ = ["HANDLE_ATTRIBUTES", "explain_handle_use"]

#: Attributes of 0.18's checkpoint handle that flow code called on a checkpoint's result.
HANDLE_ATTRIBUTES = frozenset({"load"})

_MISSING = re.compile(r"has no attribute '(\w+)'")


def _missing_attribute(exc: AttributeError) -> str | None:
    if exc.name is not None:
        return exc.name
    # Classes with their own __getattr__ (pydantic models...) often raise without setting `name`.
    found = _MISSING.search(str(exc))
    return found.group(1) if found else None


async def explain_handle_use(ctx: ExecutionContext, exc: BaseException | None) -> BaseException | None:
    """``exc`` as the flow body's failure should be reported: a handle attribute used on a
    checkpoint's value becomes :class:`~kitaru.errors.KitaruNotAHandleError`; anything else is
    returned unchanged."""
    if not isinstance(exc, AttributeError) or isinstance(exc, KitaruError):
        return exc
    attribute = _missing_attribute(exc)
    if attribute not in HANDLE_ATTRIBUTES:
        return exc
    obj = getattr(exc, "obj", None)
    call_id = None
    known = ctx._outputs.get(id(obj)) if obj is not None else None
    if known is not None and known[2] is obj:
        try:
            artifact = await ctx.runtime.astate.get_artifact(known[0])
        except Exception:  # explaining must never hide the error it explains
            artifact = None
        call_id = artifact.call_id if artifact is not None else None
    if call_id is None:
        exc.add_note(
            f"kitaru: if this value came from a checkpoint, remove `.{attribute}()`: inside a flow a "
            "checkpoint call returns its value itself, not a handle as in Kitaru 0.18."
        )
        return exc
    name = call_id.split("/", 1)[0].rsplit(":", 1)[0]
    what = type(obj).__qualname__
    error = KitaruNotAHandleError(
        f"checkpoint {call_id!r} returned its value (a {what}) to the flow, not a handle, so it has "
        f"no `.{attribute}()`: inside a flow a checkpoint call returns the value itself (Kitaru 0.18 "
        f"returned a handle). Remove `.{attribute}()`: write `{name}(...)` where the code says "
        f"`{name}(...).{attribute}()`.",
        checkpoint=call_id,
        attribute=attribute,
    )
    error.__cause__ = exc
    return error.with_traceback(exc.__traceback__)
