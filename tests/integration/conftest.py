"""Fixtures of the integration tests that need a nats-server of their own."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.nats_server import EmbeddedNats


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """An embedded nats-server the test alone uses: it may pause (SIGSTOP), kill or restart it;
    a paused one is resumed before it is stopped."""
    srv = EmbeddedNats(tmp_path / "nats", port=0, name="dim-own")
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            os.kill(srv.proc.pid, signal.SIGCONT)
        srv.stop()
