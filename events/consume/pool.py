"""`run_pool`: the workers' loop, up to `capacity` messages of one or more consumers in flight."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from events.bus import Bus
from events.consume.puller import Arrivals, Puller, hand_back, next_arrival
from events.consume.settle import Settler
from events.consume.spec import ConsumerSpec, Delivery, Reject, Retry

log = logging.getLogger(__name__)


async def run_pool(
    bus: Bus,
    specs: list[ConsumerSpec],
    handle: Callable[[Delivery], Awaitable[None]],
    *,
    capacity: int,
    stop: asyncio.Event,
) -> None:
    """Handle messages of one or more consumers concurrently, up to `capacity` at once.

    Each consumer asks for at most the free capacity, so a worker never holds leases on work
    it cannot start. On `stop` it asks for nothing more, hands back (nak) what arrived but was
    not started, and returns once every started handler has finished.
    """
    queue: Arrivals = asyncio.Queue()
    pullers = [Puller(bus, spec, queue) for spec in specs]
    settlers = {id(p): Settler(bus, p.spec) for p in pullers}
    running: set[asyncio.Task[None]] = set()
    for puller in pullers:
        await puller.start(stop)
    try:
        while not stop.is_set():
            free = capacity - len(running) - queue.qsize()
            for puller in pullers:
                puller.check_stall()
                want = free - puller.outstanding
                if want > 0 and (puller.outstanding == 0 or want >= max(1, capacity // 4)):
                    await puller.request(want)
            if len(running) >= capacity:
                await asyncio.wait(running, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
                continue
            got = await next_arrival(queue, timeout=0.25)
            if got is None:
                continue
            puller, msg = got
            task = asyncio.create_task(_one(settlers[id(puller)], msg, handle))
            running.add(task)
            task.add_done_callback(running.discard)
    finally:
        await hand_back(queue)
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        await hand_back(queue)
        for puller in pullers:
            await puller.stop()


async def _one(settler: Settler, msg: Msg, handle: Callable[[Delivery], Awaitable[None]]) -> None:
    """Decode, handle and settle one message (an undecodable one is rejected)."""
    opened = await settler.open(msg)
    if isinstance(opened, str):
        await settler.reject(msg, opened)
        return
    error: BaseException | None = None
    try:
        await handle(opened)
    except Exception as exc:
        error = exc
        if not isinstance(exc, (Retry, Reject)):
            log.exception("%s: handler failed on %s", settler.spec.durable, msg.subject)
    await settler.settle(opened, error)
