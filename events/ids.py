"""Sortable unique ids (ULID layout: 48-bit milliseconds + 80 random bits, Crockford base32)."""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_MASK = (1 << 80) - 1
_lock = threading.Lock()
_last_ms = -1
_last_random = 0


def new_id() -> str:
    """A 26-character id that sorts by creation time and is unique, monotonic within a process."""
    global _last_ms, _last_random
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            # Same (or earlier, if the clock stepped back) millisecond: keep order by counting up.
            ms = _last_ms
            rnd = (_last_random + 1) & _RANDOM_MASK
        else:
            rnd = int.from_bytes(os.urandom(10), "big")
        _last_ms, _last_random = ms, rnd
    value = (ms << 80) | rnd
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
