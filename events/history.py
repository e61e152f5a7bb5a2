"""Reading stored events back: one job's history, or a whole stream for a rebuild."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from events.bus import Bus
from events.envelope import Envelope, decode
from events.errors import EventDecodeError, transient
from events.retry import READ

log = logging.getLogger(__name__)


async def read_events(
    bus: Bus,
    stream: str,
    subject: str | list[str],
    *,
    batch: int = 500,
    since: datetime | None = None,
    patience_s: float = 30.0,
) -> AsyncIterator[tuple[int, Envelope]]:
    """Every decodable event stored on `subject` (wildcards allowed; several subjects in a
    list), oldest first — or stored at `since` or later — with its seq.

    Reads up to the stream's end at the time of the call and stops there. Undecodable
    messages are skipped with a warning (their consumers have recorded them on DEAD).

    The reading consumer is ephemeral and lives on one server: when that server goes away
    or the stream changes leader mid-read (a clustered failover), the read goes on from
    the next unread seq with a new consumer, for up to `patience_s` of trying, and then
    raises the last error.
    """
    subjects = [subject] if isinstance(subject, str) else subject
    next_seq: int | None = None  # None: start at the beginning (or at `since`)
    give_up = time.monotonic() + patience_s
    retry = 0  # retries since the last progress
    while True:
        try:
            reading = _read_once(bus, stream, subjects, batch, since, next_seq)
            async with contextlib.aclosing(reading):
                async for seq, envelope in reading:
                    next_seq = seq + 1
                    retry = 0
                    give_up = time.monotonic() + patience_s
                    yield seq, envelope
            return
        except _Interrupted as stop:
            retry += 1
            delay = READ.delay(retry)
            if time.monotonic() + delay > give_up:
                raise stop.cause from None
            log.warning(
                "reading %s interrupted (%r); going on from seq %s", stream, stop.cause, next_seq
            )
            await asyncio.sleep(delay)


class _Interrupted(Exception):
    """NATS became unavailable mid-read; `cause` is what it raised."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause


async def _read_once(
    bus: Bus,
    stream: str,
    subjects: list[str],
    batch: int,
    since: datetime | None,
    start_seq: int | None,
) -> AsyncGenerator[tuple[int, Envelope]]:
    if start_seq is not None:
        deliver = {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": start_seq}
    elif since is not None:
        deliver = {"deliver_policy": DeliverPolicy.BY_START_TIME, "opt_start_time": since}
    else:
        deliver = {"deliver_policy": DeliverPolicy.ALL}
    try:
        info = await bus.js.add_consumer(
            stream,
            ConsumerConfig(
                filter_subject=subjects[0] if len(subjects) == 1 else None,
                filter_subjects=subjects if len(subjects) > 1 else None,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30.0,
                mem_storage=True,
                **deliver,  # type: ignore[arg-type]
            ),
        )
    except Exception as exc:
        if transient(exc):
            raise _Interrupted(exc) from exc
        raise
    name = info.name
    try:
        if info.num_pending == 0:
            return
        sub = await bus.js.pull_subscribe_bind(consumer=name, stream=stream)
        try:
            done = False
            while not done:
                try:
                    msgs = await sub.fetch(batch, timeout=5.0)
                except Exception as exc:  # an idle fetch here means the consumer is gone
                    if transient(exc):
                        raise _Interrupted(exc) from exc
                    raise
                for msg in msgs:
                    meta = msg.metadata
                    if meta.num_pending == 0:
                        done = True
                    try:
                        yield meta.sequence.stream, decode(await bus.body(msg.data, msg.headers))
                    except EventDecodeError as exc:
                        log.warning(
                            "skipping %s seq %d: %s", msg.subject, meta.sequence.stream, exc
                        )
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
    finally:
        with contextlib.suppress(Exception):
            await bus.js.delete_consumer(stream, name)
