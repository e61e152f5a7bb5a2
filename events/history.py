"""Reading stored events back: one job's history, or a whole stream for a rebuild."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from events.bus import Bus
from events.envelope import Envelope, decode
from events.errors import EventDecodeError

log = logging.getLogger(__name__)


async def read_events(
    bus: Bus,
    stream: str,
    subject: str | list[str],
    *,
    batch: int = 500,
    since: datetime | None = None,
) -> AsyncIterator[tuple[int, Envelope]]:
    """Every decodable event stored on `subject` (wildcards allowed; several subjects in a
    list), oldest first — or stored at `since` or later — with its seq.

    Reads up to the stream's end at the time of the call and stops there. Undecodable
    messages are skipped with a warning (their consumers have recorded them on DEAD).
    """
    subjects = [subject] if isinstance(subject, str) else subject
    info = await bus.js.add_consumer(
        stream,
        ConsumerConfig(
            filter_subject=subjects[0] if len(subjects) == 1 else None,
            filter_subjects=subjects if len(subjects) > 1 else None,
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL if since is None else DeliverPolicy.BY_START_TIME,
            opt_start_time=since,
            inactive_threshold=30.0,
            mem_storage=True,
        ),
    )
    name = info.name
    try:
        if info.num_pending == 0:
            return
        sub = await bus.js.pull_subscribe_bind(consumer=name, stream=stream)
        try:
            done = False
            while not done:
                for msg in await sub.fetch(batch, timeout=5.0):
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
            await sub.unsubscribe()
    finally:
        with contextlib.suppress(Exception):
            await bus.js.delete_consumer(stream, name)
