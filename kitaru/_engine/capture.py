"""Capture of stdout, stderr and ``logging`` records while flows run, per call, into the journal.

While any flow runs in the process, ``sys.stdout``/``sys.stderr`` are wrapped by a tee that still
writes everything through, and a handler sits on the root logger. That handler only adds: a record
still reaches the user's own handlers, and where there are none, the console exactly as Python
would print it without kitaru (``logging.lastResort``: warnings and errors to stderr). Text written
in the context of a
running checkpoint joins that checkpoint's records (committed with its outcome, so its order is
kept even when checkpoints run concurrently); text written by the flow body rides with the next
commit. Outside any flow nothing is recorded.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from contextvars import ContextVar
from typing import Any, TextIO

from kitaru.store import JournalRecord

from .context import _current_call, _current_exec

__all__ = ["capturing"]

_lock = threading.Lock()
_users = 0
_saved: dict[str, TextIO] = {}
_handler: _Handler | None = None
# Set while a log record is printed on kitaru's behalf: the tee lets that text through without
# recording it again (the record itself is in the journal already, as a ``log`` entry).
_echoing: ContextVar[bool] = ContextVar("kitaru_echoing_log", default=False)


def _record(stream: str, text: str) -> None:
    if not text:
        return
    from kitaru.secrets import redact

    text = redact(text)  # a secret's value printed by the flow never reaches the journal
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
        if not _echoing.get():
            _record(self._name, text)
        return self._target.write(text)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._target, attr)


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if _current_exec.get() is not None:
            try:
                text = f"{record.levelname} {record.name}: {record.getMessage()}\n"
                if record.exc_info:
                    text += logging.Formatter().formatException(record.exc_info) + "\n"
            except Exception:  # a broken log call must not break the flow
                text = None
            if text is not None:
                _record("log", text)
        self._fall_back_to_last_resort(record)

    def _fall_back_to_last_resort(self, record: logging.LogRecord) -> None:
        """Print the record as Python does when no handler is configured. Our handler on the root
        logger counts as one, which switches ``logging.lastResort`` off: without this, a flow's
        warnings would vanish from the console of a script that never configured logging."""
        last_resort = logging.lastResort
        if last_resort is None or record.levelno < last_resort.level:
            return
        logger: logging.Logger | None = (
            logging.getLogger(record.name) if record.name != "root" else logging.getLogger()
        )
        while logger is not None:
            if any(h is not self for h in logger.handlers):
                return  # someone else handles it: as without kitaru, lastResort stays silent
            if not logger.propagate:
                break
            logger = logger.parent
        token = _echoing.set(True)
        try:
            last_resort.handle(record)
        finally:
            _echoing.reset(token)


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
