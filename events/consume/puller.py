"""Pull requests kept outstanding for one consumer, and the queue of what they bring.

Hand-rolled rather than nats-py's `fetch`, whose batched form waits out its whole timeout once
the first message of a lingering request arrives: as nats.go's ``Consume`` does, requests stay
open on the server so a message is handled the moment it arrives, and an idle heartbeat shows
when they were lost (two missed: ask again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TypeAlias

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerInfo

from events.bus import Bus
from events.consume.durable import ensure_consumer, ensure_in_order, restart_at
from events.consume.spec import ConsumerSpec
from events.errors import while_unavailable

log = logging.getLogger(__name__)

Arrivals: TypeAlias = "asyncio.Queue[tuple[Puller, Msg]]"
"""What the pullers of one loop have received, each message with the puller that asked for it."""


class Puller:
    """Keeps pull requests outstanding for one consumer and queues what arrives.

    In order (`run_ordered`), it also checks that every delivery arrives: JetStream numbers a
    consumer's deliveries, and one sent while the connection was away (a reconnect, a server
    killed, a leader moving) is counted as delivered but never comes — with an ack-all consumer
    the next ack would then settle it unseen, and by sequence a fold would skip it for good. So
    at the first gap in the numbering the puller stops taking what follows and recreates its
    durable just above the last stream sequence it did receive (`reposition`); what it had
    already received again is skipped as seen.
    """

    def __init__(
        self, bus: Bus, spec: ConsumerSpec, queue: Arrivals, *, expires_s: float = 10.0
    ) -> None:
        self.bus = bus
        self.spec = spec
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}"
        self.inbox = bus.nc.new_inbox()
        self.expires_s = expires_s
        self.heartbeat_s = max(1.0, expires_s / 4)
        self.queue = queue
        self.drained = asyncio.Event()  # set while no message is asked for: see `outstanding`
        self._outstanding = 0
        self.drained.set()
        self.last_heard = time.monotonic()
        self._sub: Subscription | None = None
        # In order only: the delivery number the next message must carry, and the stream
        # sequence up to which every message of the consumer has been received.
        self.next_delivery = 0
        self.received_upto = 0
        self.gap: tuple[int, int] | None = None  # (expected, got) until repositioned

    async def start(self, stop: asyncio.Event, *, in_order: bool = False) -> None:
        """Create (or update) the durable and listen for its messages; NATS not answering for
        now is waited out (`while_unavailable`)."""
        what = f"set up consumer {self.spec.durable}"
        if in_order:
            self._track(
                await while_unavailable(lambda: ensure_in_order(self.bus, self.spec), stop, what)
            )
        else:
            await while_unavailable(lambda: ensure_consumer(self.bus, self.spec), stop, what)
        await self._subscribe()

    @property
    def outstanding(self) -> int:
        """Messages asked for that have not come (nor been written off by the server)."""
        return self._outstanding

    @outstanding.setter
    def outstanding(self, n: int) -> None:
        self._outstanding = n
        if n == 0:
            self.drained.set()
        else:
            self.drained.clear()

    def _track(self, info: ConsumerInfo) -> None:
        self.next_delivery = (info.delivered.consumer_seq if info.delivered else 0) + 1
        self.received_upto = info.ack_floor.stream_seq if info.ack_floor else 0
        self.gap = None

    async def _subscribe(self) -> None:
        self.inbox = self.bus.nc.new_inbox()
        inbox = self.inbox

        async def on_msg(msg: Msg) -> None:
            if inbox == self.inbox:  # not a straggler for a request of before a reposition
                await self._on_msg(msg)

        self._sub = await self.bus.nc.subscribe(inbox, cb=on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    def in_sequence(self, msgs: list[Msg]) -> list[Msg]:
        """The leading messages of `msgs` up to a gap in the delivery numbering (in order only).

        A number below the expected one is a redelivery (e.g. by a new consumer leader): taken.
        A number above it means deliveries that never arrived: that message and all after it
        are dropped unsettled, and `gap` is set until `reposition` has run.
        """
        if self.gap is not None:
            return []
        for i, msg in enumerate(msgs):
            seq = msg.metadata.sequence
            if seq.consumer > self.next_delivery:
                self.gap = (self.next_delivery, seq.consumer)
                return msgs[:i]
            self.next_delivery = max(self.next_delivery, seq.consumer + 1)
            self.received_upto = max(self.received_upto, seq.stream)
        return msgs

    async def reposition(self) -> None:
        """After a gap: recreate the durable just above what was received, on a new inbox."""
        assert self.gap is not None
        expected, got = self.gap
        log.warning(
            "%s: deliveries %d..%d never arrived; taking the consumer up again from seq %d",
            self.spec.durable,
            expected,
            got - 1,
            self.received_upto + 1,
        )
        await self.stop()
        while not self.queue.empty():  # the rest of the broken run comes again
            self.queue.get_nowait()
        self.outstanding = 0
        self._track(await restart_at(self.bus, self.spec, self.received_upto + 1))
        await self._subscribe()

    async def _on_msg(self, msg: Msg) -> None:
        self.last_heard = time.monotonic()
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self.outstanding = max(0, self.outstanding - 1)
            self.queue.put_nowait((self, msg))
        elif status in ("404", "408", "409"):
            # The request ended; the header says how many of its messages never came.
            left = (msg.headers or {}).get("Nats-Pending-Messages")
            if left is not None and left.isdigit():
                self.outstanding = max(0, self.outstanding - int(left))
            else:
                self.outstanding = 0
        # "100" is an idle heartbeat: it only proves the request is alive.

    async def request(self, n: int, *, no_wait: bool = False) -> None:
        """Ask for up to `n` messages: as they come (until the request expires), or with
        `no_wait` only those waiting now, in one burst (the request then ends)."""
        if n <= 0:
            return
        body: dict[str, int | bool] = {"batch": n}
        if no_wait:
            body["no_wait"] = True
        else:
            body["expires"] = int(self.expires_s * 1e9)
            body["idle_heartbeat"] = int(self.heartbeat_s * 1e9)
        await self.bus.nc.publish(self.next_subject, json.dumps(body).encode(), reply=self.inbox)
        self.outstanding += n
        self.last_heard = time.monotonic()

    async def collect(self, n: int, timeout_s: float) -> None:
        """Take in what has gathered on the server: up to `n` messages in one burst; returns
        once they are queued (or after `timeout_s`; what comes later is queued then)."""
        await self.request(n, no_wait=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.drained.wait()

    def check_stall(self) -> None:
        if self.outstanding and time.monotonic() - self.last_heard > 2 * self.heartbeat_s + 1:
            log.warning("pull on %s went quiet; asking again", self.next_subject)
            self.outstanding = 0


async def next_arrival(queue: Arrivals, timeout: float) -> tuple[Puller, Msg] | None:
    """The next queued message, waiting up to `timeout`; None if none came."""
    try:
        if not queue.empty():
            return queue.get_nowait()
        async with asyncio.timeout(timeout):  # no extra task per message, unlike wait_for
            return await queue.get()
    except TimeoutError:
        return None


async def hand_back(queue: Arrivals) -> None:
    """Nak what arrived but was never started, so it is delivered again at once."""
    while not queue.empty():
        _, msg = queue.get_nowait()
        try:
            await msg.nak()
        except Exception:
            log.debug("could not hand back %s", msg.subject)
