"""Sortable unique ids (ULID layout: 48-bit millisecond time + 80 random bits, Crockford base32)."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

#: The longest execution id a caller may choose (``flow.run(execution_id=...)``); longer strings
#: are refused, and looked up as no id at all.
MAX_ID_LENGTH = 256


def new_id() -> str:
    """Return a 26-character id that sorts by creation time across processes."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
