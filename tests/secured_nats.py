"""For tests of credentials: a nats-server with more configuration, and fresh NKey user seeds."""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path

import nkeys

from services.nats_server import EmbeddedNats


class ConfiguredNats(EmbeddedNats):
    """An embedded nats-server on a free port with `extra` after dim's own configuration."""

    def __init__(self, data_dir: Path, extra: str) -> None:
        super().__init__(data_dir, port=0, name=f"dim-test-{uuid.uuid4().hex[:6]}")
        self.extra = extra

    def config(self) -> str:
        return super().config() + self.extra


def new_user_seed() -> bytes:
    """A fresh NKey user seed ("SU..."), as `nk -gen user` makes one (nkeys-py makes none)."""
    prefix = nkeys.PREFIX_BYTE_USER
    raw = bytearray([nkeys.PREFIX_BYTE_SEED | prefix >> 5, (prefix & 31) << 3, *os.urandom(32)])
    raw += nkeys.crc16(raw).to_bytes(2, "little")
    return base64.b32encode(raw).rstrip(b"=")


def public_key(seed: bytes) -> str:
    """The public key ("U...") of a seed, as a server's configuration names the user."""
    return str(nkeys.from_seed(bytearray(seed.strip())).public_key.decode())
