"""Sortable unique ids (ULID layout: 48-bit millisecond time + 80 random bits, Crockford base32)."""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Every pair of digits, by the 10 bits they encode: an id is 13 lookups, not 26 shifts.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_SHIFTS = range(120, -1, -10)

#: The longest execution id a caller may choose (``flow.run(execution_id=...)``); longer strings
#: are refused, and looked up as no id at all.
MAX_ID_LENGTH = 256


_last = 0
_lock = threading.Lock()


def new_id() -> str:
    """Return a 26-character id that sorts by creation time across processes, and strictly in
    creation order within one: an id made in the same millisecond as the previous one is that
    one plus one (ULID's monotonic rule). Executions list by creation time, then id (a caller may
    choose an id that sorts anywhere); the id breaks ties between executions created in the same
    instant, in the order this process made them."""
    global _last
    with _lock:
        value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
        if value >> 80 <= _last >> 80:
            value = _last + 1
        _last = value
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])
