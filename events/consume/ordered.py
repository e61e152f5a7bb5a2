"""`run_ordered`: batches handled in lanes keyed by e.g. job id — the same key in stream order,
different keys concurrently (orchestrator, projector, dead letters)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from events.bus import Bus
from events.consume.puller import Arrivals, Puller, hand_back, next_arrival
from events.consume.settle import Action, Settler, Verdict, ack, verdict
from events.consume.spec import ConsumerSpec, Delivery
from events.errors import transient
from events.retry import LANE, START

log = logging.getLogger(__name__)

HandleGroup = Callable[[list[Delivery]], Awaitable[None]]


async def run_ordered(
    bus: Bus,
    spec: ConsumerSpec,
    handle_group: HandleGroup,
    *,
    key: Callable[[str], str],
    stop: asyncio.Event,
    seen: Callable[[str, int], bool] | None = None,
    max_batch: int = 256,
    linger_s: float = 0.0,
    attempts: int | None = None,
) -> None:
    """Handle what has arrived in lanes: one group per key, in stream order within the group.

    `key` maps a subject to its lane. `seen(key, stream_seq)`, if given, says a message is
    already applied (a redelivery, or the consumer's own append coming back): it is acked
    without being decoded. `linger_s` waits that long after the first message for more to
    arrive — on the server, which then sends them at once — so bursts are handled (and
    written) together. A group whose handler raises is retried in-process (keeping order;
    progress is signalled so leases do not lapse) up to `attempts` times, then terminated and
    recorded.
    """
    run = _Ordered(bus, spec, handle_group, key, stop, seen, max_batch, linger_s, attempts)
    await run.puller.start(stop, in_order=True)
    try:
        while not stop.is_set():
            if not await run.repositioned():
                continue
            await run.ask()
            msgs = await run.take()
            if msgs is None:
                continue
            groups, done = await run.sort(msgs)
            results = await asyncio.gather(*(run.lane(group) for group in groups.values()))
            await run.ack(list(groups.values()), results, done)
    finally:
        await hand_back(run.queue)
        await run.puller.stop()


class _Ordered:
    """One `run_ordered` loop's state, and the steps of one turn of it."""

    def __init__(
        self,
        bus: Bus,
        spec: ConsumerSpec,
        handle_group: HandleGroup,
        key: Callable[[str], str],
        stop: asyncio.Event,
        seen: Callable[[str, int], bool] | None,
        max_batch: int,
        linger_s: float,
        attempts: int | None,
    ) -> None:
        self.spec = spec
        self.handle_group = handle_group
        self.key = key
        self.stop = stop
        self.seen = seen
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.policy = LANE if attempts is None else LANE.with_tries(attempts)
        self.queue: Arrivals = asyncio.Queue()
        self.puller = Puller(bus, spec, self.queue)
        self.settler = Settler(bus, spec)

    async def repositioned(self) -> bool:
        """After a gap in the deliveries, take the consumer up again; False while NATS is away
        (waited out as at start-up)."""
        if self.puller.gap is None:
            return True
        try:
            await self.puller.reposition()
        except Exception as exc:
            if not transient(exc):
                raise
            log.warning("%s: cannot reposition yet: %r", self.spec.durable, exc)
            await asyncio.sleep(START.delay(1))
            return False
        return True

    async def ask(self) -> None:
        """Keep enough asked for: a batch's worth, or while lingering the next message only."""
        puller = self.puller
        puller.check_stall()
        if not self.linger_s:
            want = self.max_batch - puller.outstanding - self.queue.qsize()
            if want >= self.max_batch // 2:
                await puller.request(want)
        elif puller.outstanding == 0 and self.queue.empty():
            await puller.request(1)  # the doorbell: the next message, whenever it comes

    async def take(self) -> list[Msg] | None:
        """The next batch, up to the first gap in the deliveries; None if nothing came."""
        first = await next_arrival(self.queue, timeout=0.25)
        if first is None:
            return None
        if self.linger_s:
            # What arrives meanwhile waits on the server and then comes in one burst: one
            # wake-up of this process per batch rather than one per message.
            await asyncio.sleep(self.linger_s)
            await self.puller.collect(self.max_batch - 1 - self.queue.qsize(), timeout_s=2.0)
        msgs = [first[1]]
        while len(msgs) < self.max_batch and not self.queue.empty():
            msgs.append(self.queue.get_nowait()[1])
        return self.puller.in_sequence(msgs)

    async def sort(self, msgs: list[Msg]) -> tuple[dict[str, list[Delivery]], list[Msg]]:
        """The batch by lane, and the messages already seen (to ack unopened); a message that
        does not decode is rejected."""
        groups: dict[str, list[Delivery]] = {}
        done: list[Msg] = []
        for msg in msgs:
            lane_key = self.key(msg.subject)
            if self.seen is not None and self.seen(lane_key, msg.metadata.sequence.stream):
                done.append(msg)
                continue
            opened = await self.settler.open(msg)
            if isinstance(opened, str):
                await self.settler.reject(msg, opened)
                continue
            groups.setdefault(lane_key, []).append(opened)
        return groups, done

    async def lane(self, group: list[Delivery]) -> bool:
        """Handle one key's group, retried in-process as `verdict` says (NATS being away is
        waited out, keeping the order and the lease); True if it may be acked."""
        tried = 0
        while True:
            tried += 1
            error: BaseException | None = None
            try:
                await self.handle_group(group)
            except Exception as exc:
                error = exc
                log.warning("%s: group failed (try %d): %r", self.spec.durable, tried, exc)
            v = verdict(error, tried, self.policy, in_process=True, stopping=self.stop.is_set())
            if v.action is not Action.AGAIN:
                return await self.settle(group, v)
            await asyncio.sleep(v.delay_s)
            for d in group:
                with contextlib.suppress(Exception):
                    await d.in_progress()

    async def settle(self, group: list[Delivery], v: Verdict) -> bool:
        """Carry out a lane's final verdict; True if its messages may be acked."""
        if v.action is Action.ACK:
            return True
        if v.action is Action.HAND_BACK:
            for d in group:  # shutting down mid-retry: hand them back, in order, for later
                await d.msg.nak()
            return False
        for d in group:
            await self.settler.reject(d.msg, v.reason)
        return True

    async def ack(self, groups: list[list[Delivery]], results: list[bool], done: list[Msg]) -> None:
        """Ack the batch: the seen messages and every lane that may be acked."""
        for group, ok in zip(groups, results, strict=True):
            if ok:
                done.extend(d.msg for d in group)
        if not self.spec.ack_all:
            await ack(done, all_below=False)
        elif all(results):
            await ack(done, all_below=True)
        # else a lane was handed back on the way out: nothing of this batch is acked (on an
        # ack-all consumer any ack settles the handed-back messages below it too); the next
        # run takes the batch again
