"""The one consume loop: pull consumers, and ack / in-progress / nak / term decided in one place.

Pulling: instead of `fetch` (whose batched form waits out its whole timeout once the first
message of a lingering request arrives), a `_Puller` keeps pull requests outstanding on the
server, as nats.go's ``Consume`` does, so a message is handled the moment it arrives. Requests
carry an idle heartbeat; a puller that hears nothing for two heartbeats assumes its requests were
lost (reconnect, leader change) and asks again — the guard against stalls. A lingering ordered
consumer (the projectors) instead asks for one message while idle, lets what follows gather on
the server for its linger, then takes it in one burst (a `no_wait` request): one wake-up of the
process per batch instead of one per message, which on a loaded machine is most of the cost of a
message.

Settling, the only place that decides:
- the handler returns: ack;
- `Retry` raised: nak with its delay;
- `Reject` raised, or bytes that do not decode: term, and a
  `message.rejected` event with the payload and reason goes to the DEAD stream first;
- any other exception: nak with exponential backoff, or — on the last allowed delivery —
  term and record, so nothing loops forever and nothing disappears.

Two shapes of consumer use it: `run_pool` keeps up to `capacity` messages in flight at once
(workers), and `run_ordered` handles a batch at a time in lanes keyed by e.g. job id — the same
key in order, different keys concurrently (orchestrator, projector).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import NotFoundError

from events.bus import Bus
from events.envelope import Envelope, decode
from events.errors import DimError, EventDecodeError, transient, while_unavailable
from events.retry import LANE, REDELIVERY
from events.work import MessageRejected

log = logging.getLogger(__name__)


class Retry(DimError):
    """Raise from a handler to have the message redelivered after `delay_s`."""

    def __init__(self, reason: str, delay_s: float = 1.0) -> None:
        super().__init__(reason)
        self.delay_s = delay_s


class Reject(DimError, ValueError):
    """Raise from a handler for a message that can never be processed (terminated and recorded)."""


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A durable pull consumer as dim wants it."""

    stream: str
    durable: str
    filter_subjects: tuple[str, ...]
    ack_wait_s: float = 30.0
    max_deliver: int = -1
    max_ack_pending: int = 1000
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL
    inactive_threshold_s: float | None = None
    description: str | None = None
    ack_all: bool = False

    def config(self) -> ConsumerConfig:
        """The nats-py config for this spec."""
        single = len(self.filter_subjects) == 1
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            description=self.description,
            deliver_policy=self.deliver_policy,
            ack_policy=AckPolicy.ALL if self.ack_all else AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
            filter_subject=self.filter_subjects[0] if single else None,
            filter_subjects=None if single else list(self.filter_subjects),
            inactive_threshold=self.inactive_threshold_s,
            max_waiting=512,
        )


async def ensure_consumer(bus: Bus, spec: ConsumerSpec) -> ConsumerInfo:
    """Create the durable, or update it to `spec` if it exists (pull_subscribe never updates)."""
    return await bus.js.add_consumer(spec.stream, config=spec.config())


async def restart_at(bus: Bus, spec: ConsumerSpec, seq: int) -> ConsumerInfo:
    """Recreate the durable to deliver from stream sequence `seq` on (a deliver policy cannot be
    changed in place)."""
    with contextlib.suppress(NotFoundError):
        await bus.js.delete_consumer(spec.stream, spec.durable)
    config = spec.config()
    config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
    config.opt_start_seq = seq
    return await bus.js.add_consumer(spec.stream, config=config)


async def ensure_in_order(bus: Bus, spec: ConsumerSpec) -> ConsumerInfo:
    """Create or update the durable for a handler that needs stream order (`run_ordered`).

    Messages a previous incarnation took but never acked (it was killed) would come back only
    after the ack wait — behind newer ones, and a fold that skips what it has "seen" by
    sequence would then skip them for good. So when the durable has unacked messages, it is
    recreated to start just above its ack floor: they come again at once, in order, and the
    handlers' idempotence absorbs whatever had in fact been applied.
    """
    try:
        info = await bus.js.consumer_info(spec.stream, spec.durable)
    except NotFoundError:
        return await ensure_consumer(bus, spec)
    if info.num_ack_pending:
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        log.info(
            "%s: %d messages unacked by a previous run; restarting from seq %d in order",
            spec.durable,
            info.num_ack_pending,
            floor + 1,
        )
        return await restart_at(bus, spec, floor + 1)
    config = spec.config()  # keep where it starts: a deliver policy cannot be changed in place
    config.deliver_policy = info.config.deliver_policy
    config.opt_start_seq = info.config.opt_start_seq
    return await bus.js.add_consumer(spec.stream, config=config)


@dataclass(slots=True)
class Delivery:
    """One decoded message and what JetStream says about it."""

    msg: Msg
    envelope: Envelope
    stream_seq: int
    deliveries: int

    @property
    def subject(self) -> str:
        """The subject the message was stored on."""
        return self.msg.subject

    @property
    def headers(self) -> dict[str, str]:
        """The message headers (trace context among them)."""
        return self.msg.headers or {}

    async def in_progress(self) -> None:
        """Tell JetStream the message is still being worked on (resets the ack timer)."""
        await self.msg.in_progress()


def _backoff(deliveries: int) -> float:
    return REDELIVERY.delay(deliveries)


class _Puller:
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
        self,
        bus: Bus,
        spec: ConsumerSpec,
        queue: asyncio.Queue[tuple[_Puller, Msg]],
        *,
        expires_s: float = 10.0,
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


async def _next(
    queue: asyncio.Queue[tuple[_Puller, Msg]], timeout: float
) -> tuple[_Puller, Msg] | None:
    try:
        if not queue.empty():
            return queue.get_nowait()
        async with asyncio.timeout(timeout):  # no extra task per message, unlike wait_for
            return await queue.get()
    except TimeoutError:
        return None


async def _hand_back(queue: asyncio.Queue[tuple[_Puller, Msg]]) -> None:
    while not queue.empty():
        _, msg = queue.get_nowait()
        try:
            await msg.nak()
        except Exception:
            log.debug("could not hand back %s", msg.subject)


class _Settler:
    """Decodes messages and settles them; records rejects on the DEAD stream."""

    def __init__(self, bus: Bus, spec: ConsumerSpec) -> None:
        self.bus = bus
        self.spec = spec
        self.max_deliver = spec.max_deliver

    async def open(self, msg: Msg) -> Delivery | str:
        """Decode `msg` (fetching a stored payload); the error text if it cannot be."""
        try:
            envelope = decode(await self.bus.body(msg.data, msg.headers))
        except EventDecodeError as exc:
            return str(exc)
        except Exception as exc:  # a payload reference that cannot be read
            return f"payload not readable: {exc!r}"
        meta = msg.metadata
        return Delivery(msg, envelope, meta.sequence.stream, meta.num_delivered)

    async def reject(self, msg: Msg, reason: str) -> None:
        meta = msg.metadata
        log.error(
            "%s: rejecting %s seq %d: %s",
            self.spec.durable,
            msg.subject,
            meta.sequence.stream,
            reason,
        )
        try:
            payload = msg.data.decode()
        except UnicodeDecodeError:
            payload = "base64:" + base64.b64encode(msg.data).decode()
        record = MessageRejected(
            consumer=self.spec.durable,
            stream=self.spec.stream,
            subject=msg.subject,
            stream_seq=meta.sequence.stream,
            deliveries=meta.num_delivered,
            error=reason[:4000],
            payload=payload[:64_000],
            headers=dict((msg.headers or {}).items()),
        )
        try:
            await self.bus.publish(
                self.bus.names.dead(self.spec.durable), Envelope(record, actor=self.spec.durable)
            )
        except Exception:
            log.exception("could not record a rejected message; it will be redelivered")
            await msg.nak(delay=5.0)
            return
        await msg.term()

    async def settle(self, delivery: Delivery, error: BaseException | None) -> None:
        msg = delivery.msg
        try:
            if error is None:
                await msg.ack()
            elif isinstance(error, Retry):
                await msg.nak(delay=error.delay_s)
            elif isinstance(error, Reject):
                await self.reject(msg, str(error))
            elif 0 < self.max_deliver <= delivery.deliveries:
                await self.reject(
                    msg, f"failed on its last allowed delivery ({delivery.deliveries}): {error!r}"
                )
            else:
                await msg.nak(delay=_backoff(delivery.deliveries))
        except Exception:
            log.warning(
                "could not settle %s seq %d", msg.subject, delivery.stream_seq, exc_info=True
            )


async def _ack(msgs: list[Msg], *, all_below: bool) -> None:
    """Ack handled messages: one ack for the highest (ack-all consumers), else each."""
    if not msgs:
        return
    try:
        if all_below:
            await max(msgs, key=lambda m: m.metadata.sequence.stream).ack()
        else:
            for msg in msgs:
                await msg.ack()
    except Exception:
        log.warning("could not ack %d messages", len(msgs), exc_info=True)


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
    queue: asyncio.Queue[tuple[_Puller, Msg]] = asyncio.Queue()
    pullers = [_Puller(bus, spec, queue) for spec in specs]
    settlers = {id(p): _Settler(bus, p.spec) for p in pullers}
    running: set[asyncio.Task[None]] = set()
    for puller in pullers:
        await puller.start(stop)

    async def one(settler: _Settler, msg: Msg) -> None:
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
            got = await _next(queue, timeout=0.25)
            if got is None:
                continue
            puller, msg = got
            task = asyncio.create_task(one(settlers[id(puller)], msg))
            running.add(task)
            task.add_done_callback(running.discard)
    finally:
        await _hand_back(queue)
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        await _hand_back(queue)
        for puller in pullers:
            await puller.stop()


async def run_ordered(
    bus: Bus,
    spec: ConsumerSpec,
    handle_group: Callable[[list[Delivery]], Awaitable[None]],
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
    queue: asyncio.Queue[tuple[_Puller, Msg]] = asyncio.Queue()
    puller = _Puller(bus, spec, queue)
    settler = _Settler(bus, spec)
    policy = LANE if attempts is None else LANE.with_tries(attempts)
    await puller.start(stop, in_order=True)

    async def lane(group: list[Delivery]) -> bool:
        """Handle one key's group; True if every delivery in it may be acked.

        A failure of NATS itself (no answer in time, a connection lost) is not the events'
        fault: it is retried for as long as it lasts, keeping the order and the lease. Any
        other failure is retried `attempts` times, then the group is terminated and recorded.
        """
        error: BaseException | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                await handle_group(group)
                error = None
                break
            except Exception as exc:
                error = exc
                log.warning("%s: group failed (try %d): %r", spec.durable, attempt, exc)
                if stop.is_set() or isinstance(exc, Reject):
                    break
                if not policy.more(attempt) and not transient(exc):
                    break
                await asyncio.sleep(policy.delay(attempt))
                for d in group:
                    with contextlib.suppress(Exception):
                        await d.in_progress()
        if error is None:
            return True
        if stop.is_set() and not isinstance(error, Reject):
            for d in group:  # shutting down mid-retry: hand them back, in order, for later
                await d.msg.nak()
            return False
        for d in group:
            await settler.reject(d.msg, f"handler failed {attempt} times: {error!r}")
        return True

    try:
        while not stop.is_set():
            if puller.gap is not None:
                try:
                    await puller.reposition()
                except Exception as exc:
                    if not transient(exc):
                        raise
                    log.warning("%s: cannot reposition yet: %r", spec.durable, exc)
                    await asyncio.sleep(0.5)
                    continue
            puller.check_stall()
            if not linger_s:
                want = max_batch - puller.outstanding - queue.qsize()
                if want >= max_batch // 2:
                    await puller.request(want)
            elif puller.outstanding == 0 and queue.empty():
                await puller.request(1)  # the doorbell: the next message, whenever it comes
            first = await _next(queue, timeout=0.25)
            if first is None:
                continue
            if linger_s:
                # What arrives meanwhile waits on the server and then comes in one burst: one
                # wake-up of this process per batch rather than one per message.
                await asyncio.sleep(linger_s)
                await puller.collect(max_batch - 1 - queue.qsize(), timeout_s=2.0)
            msgs = [first[1]]
            while len(msgs) < max_batch and not queue.empty():
                msgs.append(queue.get_nowait()[1])
            msgs = puller.in_sequence(msgs)
            groups: dict[str, list[Delivery]] = {}
            done: list[Msg] = []
            for msg in msgs:
                lane_key = key(msg.subject)
                if seen is not None and seen(lane_key, msg.metadata.sequence.stream):
                    done.append(msg)
                    continue
                opened = await settler.open(msg)
                if isinstance(opened, str):
                    await settler.reject(msg, opened)
                    continue
                groups.setdefault(lane_key, []).append(opened)
            keys = list(groups)
            results = await asyncio.gather(*(lane(groups[k]) for k in keys))
            for k, ok in zip(keys, results, strict=True):
                if ok:
                    done.extend(d.msg for d in groups[k])
            if not spec.ack_all:
                await _ack(done, all_below=False)
            elif all(results):
                await _ack(done, all_below=True)
            # else a lane was handed back on the way out: nothing of this batch is acked (on an
            # ack-all consumer any ack settles the handed-back messages below it too); the next
            # run takes the batch again
    finally:
        await _hand_back(queue)
        await puller.stop()
