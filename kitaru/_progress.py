"""Progress of long work on a terminal: one line on stderr, redrawn in place with ``\\r``.

Shown only when stderr is a terminal: in a pipe, a log file, a CI job or a worker's container
nothing is written, so output people parse or keep stays as it was. ``NO_COLOR`` (any value,
https://no-color.org) or ``TERM=dumb`` drops the colour; the line itself stays. The line is redrawn
at most every :data:`REDRAW_EVERY` seconds (a fast loop does not flood the terminal), and once more
when the work ends, so the last state is always what is left on screen.

A bar when the total is known (``[#####.....]  45%  12.0 MiB/26.7 MiB  4.1 MiB/s``), a counter when
it is not (``12.0 MiB  4.1 MiB/s``; for items ``3 done``).
"""

from __future__ import annotations

import os
import re
import sys
import time
from types import TracebackType
from typing import Literal, TextIO

__all__ = ["REDRAW_EVERY", "Progress", "colour_allowed", "human_bytes"]

#: Seconds between redraws.
REDRAW_EVERY = 0.1
_WIDTH = 24
_GREEN, _DIM, _RESET = "\x1b[32m", "\x1b[2m", "\x1b[0m"
_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")


def colour_allowed(env: dict[str, str] | None = None) -> bool:
    """Whether colour may be used: not with ``NO_COLOR`` set (to anything) nor ``TERM=dumb``."""
    environ = os.environ if env is None else env
    return "NO_COLOR" not in environ and environ.get("TERM") != "dumb"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


class Progress:
    """One progress line for one piece of work; use it as a context manager.

    ``total``: how much there is (bytes or items), when known. ``min_total``: below this known
    total nothing is shown (a few kilobytes finish before a line could be read). ``stream``
    defaults to ``sys.stderr`` as it is when the work starts.
    """

    def __init__(
        self,
        label: str,
        *,
        total: int | None = None,
        unit: Literal["bytes", "items"] = "bytes",
        min_total: int = 0,
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.note = ""
        self._stream = sys.stderr if stream is None else stream
        self.enabled = _is_terminal(self._stream) and not (total is not None and total < min_total)
        self._colour = colour_allowed()
        self._started = time.monotonic()
        self._drawn_at: float | None = None
        self._shown = 0  # characters on screen, to blank a shorter redraw

    def __enter__(self) -> Progress:
        self.draw(force=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.draw()

    def update(self, done: int, *, total: int | None = None, note: str | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if note is not None:
            self.note = note
        self.draw()

    def draw(self, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and self._drawn_at is not None and now - self._drawn_at < REDRAW_EVERY:
            return
        self._drawn_at = now
        self._write(self._line(now - self._started))

    def clear(self) -> None:
        """Blank the line (before printing something else on the terminal)."""
        if self.enabled and self._shown:
            self._stream.write("\r" + " " * self._shown + "\r")
            self._stream.flush()
            self._shown = 0
            self._drawn_at = None

    def discard(self) -> None:
        """Blank the line and show nothing more (the work turned out to have nothing to show)."""
        self.clear()
        self.enabled = False

    def close(self) -> None:
        """Draw the final state and end the line."""
        if not self.enabled:
            return
        self.draw(force=True)
        self._stream.write("\n")
        self._stream.flush()
        self._shown = 0
        self.enabled = False

    def _line(self, elapsed: float) -> str:
        parts = [self.label]
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            filled = round(fraction * _WIDTH)
            bar, rest = "#" * filled, "." * (_WIDTH - filled)
            if self._colour:
                bar, rest = f"{_GREEN}{bar}{_RESET}", f"{_DIM}{rest}{_RESET}"
            parts.append(f"[{bar}{rest}] {fraction * 100:3.0f}%")
        if self.unit == "bytes":
            amount = human_bytes(self.done) + (f"/{human_bytes(self.total)}" if self.total else "")
            rate = self.done / elapsed if elapsed > 0 else 0.0
            parts += [amount, f"{human_bytes(rate)}/s"]
        else:
            parts.append(f"{self.done}/{self.total}" if self.total else f"{self.done} done")
        if self.note:
            parts.append(self.note)
        return "  ".join(parts)

    def _write(self, line: str) -> None:
        visible = len(_ESCAPES.sub("", line))
        pad = " " * max(self._shown - visible, 0)
        self._stream.write("\r" + line + pad)
        self._stream.flush()
        self._shown = visible
