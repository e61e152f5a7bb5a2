"""Embedding vectors as events carry them: little-endian float32, base64 — OpenAI's
`encoding_format: base64`, a quarter of the size of the same vector as JSON floats."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence


def encode(vector: Sequence[float]) -> str:
    """The vector as base64 of little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def decode(text: str) -> list[float]:
    """The vector `encode` made."""
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))
