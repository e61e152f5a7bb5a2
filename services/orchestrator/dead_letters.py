"""Dead letters of the work queue, into the jobs' histories.

A task's work message can be given up on in two ways, and both end in the job's log as
``task.dead_lettered`` (which fails the task without retry, and the job with it unless the
pattern tolerates the loss):

- a worker's consume loop terminated it (it failed on its last allowed delivery, or could not be
  read) and recorded it on the DEAD stream — this follows DEAD;
- JetStream stopped delivering it after `max_deliver` deliveries that ended in no ack at all
  (the workers that took it died) and said so in a MAX_DELIVERIES advisory — this records the
  message on DEAD itself, then removes it from the work queue.

Every orchestrator instance does this; message ids (the DEAD record's sequence, the work
message's sequence) keep one event of each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from events.bus import Bus, Message
from events.consume import ConsumerSpec, Delivery, run_ordered
from events.envelope import Envelope, decode
from events.errors import EventDecodeError
from events.jobs import TaskDeadLettered
from events.work import MessageRejected, TaskRequested

log = logging.getLogger(__name__)


class DeadLetters:
    """Turns given-up work messages into job events."""

    def __init__(self, bus: Bus, instance_id: str, actor: str) -> None:
        self.bus = bus
        self.names = bus.names
        self.instance_id = instance_id
        self.actor = actor
        self.recorded = 0
        self._advisories: Any = None

    def consumer(self) -> ConsumerSpec:
        """This instance's durable consumer on DEAD (every record, from the start)."""
        return ConsumerSpec(
            stream=self.names.dead_stream,
            durable=f"orchestrator-dead-{self.instance_id}",
            filter_subjects=(self.names.dead_all,),
            inactive_threshold_s=7 * 24 * 3600.0,
            description="dim orchestrator: dead letters into job histories",
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Follow DEAD and the work queue's advisories until `stop` is set."""
        self._advisories = await self.bus.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.names.tasks_stream}.*",
            self._on_advisory,
        )
        try:
            await run_ordered(
                self.bus, self.consumer(), self._handle, key=lambda subject: subject, stop=stop
            )
        finally:
            with contextlib.suppress(Exception):
                await self._advisories.unsubscribe()

    async def _handle(self, group: list[Delivery]) -> None:
        for d in group:
            record = d.envelope.data
            if isinstance(record, MessageRejected) and record.stream == self.names.tasks_stream:
                await self._record(record, f"dead-{d.stream_seq}")

    async def _record(self, record: MessageRejected, msg_id: str) -> None:
        raw = await self.bus.body(record.payload.encode(), record.headers)
        try:
            work = decode(raw).data
        except EventDecodeError:
            log.warning(
                "dead letter seq %d is not a readable task; kept on DEAD", record.stream_seq
            )
            return
        if not isinstance(work, TaskRequested):
            return
        event = TaskDeadLettered(
            job_id=work.job_id,
            task_id=work.task.task_id,
            attempt=work.attempt,
            consumer=record.consumer,
            deliveries=record.deliveries,
            error=record.error,
        )
        log.warning(
            "task %s attempt %d dead-lettered after %d deliveries: %s",
            event.task_id,
            event.attempt,
            event.deliveries,
            event.error,
        )
        await self.bus.publish(
            self.names.job(work.job_id, event.type), Envelope(event, actor=self.actor, id=msg_id)
        )
        self.recorded += 1

    async def _on_advisory(self, msg: Message) -> None:
        try:
            advisory = json.loads(msg.data)
            stream, seq = advisory["stream"], int(advisory["stream_seq"])
            consumer, deliveries = advisory.get("consumer", "?"), int(advisory.get("deliveries", 0))
            stored = await self.bus.stored(stream, seq)
        except Exception:
            log.warning("unreadable max-deliveries advisory or message", exc_info=True)
            return
        headers = dict((stored.headers or {}).items())
        record = MessageRejected(
            consumer=consumer,
            stream=stream,
            subject=stored.subject or "",
            stream_seq=seq,
            deliveries=deliveries,
            error=f"JetStream gave up after {deliveries} deliveries with no result "
            "(the workers that took it stopped)",
            payload=(stored.data or b"").decode(errors="replace"),
            headers=headers,
        )
        await self.bus.publish(
            self.names.dead(consumer), Envelope(record, actor=self.actor, id=f"maxdeliver-{seq}")
        )
        with contextlib.suppress(Exception):
            await self.bus.delete_stored(stream, seq)  # given up on: not left in the queue
