"""Capture of stdout, stderr and ``logging`` records while flows run, per call, into the journal.

While any flow runs in the process, ``sys.stdout``/``sys.stderr`` are wrapped by a tee that still
writes everything through, and a handler sits on the root logger. Text written in the context of a
running checkpoint joins that checkpoint's records (committed with its outcome, so its order is
kept even when checkpoints run concurrently); text written by the flow body rides with the next
commit. Outside any flow nothing is recorded.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, TextIO

from kitaru.store import JournalRecord

from .context import _current_call, _current_exec

__all__ = ["capturing"]

_lock = threading.Lock()
_users = 0
_saved: dict[str, TextIO] = {}
_handler: _Handler | None = None


def _record(stream: str, text: str) -> None:
    if not text:
        return
    frame = _current_call.get()
    if frame is not None:
        records = frame.records
        call_id: str | None = frame.call.call_id
    else:
        ctx = _current_exec.get()
        if ctx is None or ctx.replaying:
            return  # a resumed body's output before the resume point was recorded the first time
        records = ctx.pending_output
        call_id = None
    last = records[-1] if records else None
    if last is not None and last.kind == "output" and last.data and last.data.get("stream") == stream:
        last.data["text"] += text  # consecutive writes (print's text, then its newline) merge
        return
    records.append(
        JournalRecord(kind="output", call_id=call_id, data={"stream": stream, "text": text}, ts=time.time())
    )


class _Tee:
    """Writes through to the real stream, and records what the running flow wrote."""

    def __init__(self, name: str, target: TextIO) -> None:
        self._name = name
        self._target = target

    def write(self, text: str) -> int:
        _record(self._name, text)
        return self._target.write(text)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._target, attr)


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if _current_exec.get() is None:
            return
        try:
            text = f"{record.levelname} {record.name}: {record.getMessage()}\n"
            if record.exc_info:
                text += logging.Formatter().formatException(record.exc_info) + "\n"
        except Exception:  # a broken log call must not break the flow
            return
        _record("log", text)


class capturing:
    """Capture output while at least one flow runs (reference counted across threads)."""

    def __enter__(self) -> None:
        global _users, _handler
        with _lock:
            _users += 1
            if _users > 1:
                return
            for name in ("stdout", "stderr"):
                stream = getattr(sys, name)
                if stream is not None and not isinstance(stream, _Tee):
                    _saved[name] = stream
                    setattr(sys, name, _Tee(name, stream))
            _handler = _Handler()
            logging.getLogger().addHandler(_handler)

    def __exit__(self, *exc: object) -> None:
        global _users, _handler
        with _lock:
            _users -= 1
            if _users > 0:
                return
            for name, stream in _saved.items():
                current = getattr(sys, name)
                # Put the original back only if nobody replaced our tee meanwhile.
                if isinstance(current, _Tee) and current._target is stream:
                    setattr(sys, name, stream)
            _saved.clear()
            if _handler is not None:
                logging.getLogger().removeHandler(_handler)
                _handler = None
