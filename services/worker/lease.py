"""A task's lease kept while its attempt runs: in-progress acks, so JetStream does not hand a
long generation to another worker. A worker killed mid-task stops sending them, and the task is
redelivered once the lease lapses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from events.consume import Delivery


@contextlib.asynccontextmanager
async def lease_kept(delivery: Delivery, ack_wait_s: float) -> AsyncIterator[None]:
    """Send in-progress acks for `delivery` every third of `ack_wait_s` while the block runs."""
    keepalive = asyncio.create_task(_keep(delivery, max(0.2, ack_wait_s / 3)))
    try:
        yield
    finally:
        keepalive.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keepalive


async def _keep(delivery: Delivery, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        with contextlib.suppress(Exception):
            await delivery.in_progress()
