"""The batch-status projection (run by `dim projector`): keeps the batches bucket equal to the fold
of each batch's events in BATCHES and of its lines' ends in JOBS (`projections/batch_status`).

Two durable consumers, one per stream, write the same views by compare-and-set; each fold sets
only its own fields and skips what its sequence says it has applied. The ends of jobs that are
not a batch's lines are acked without being read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from events.batches import line_of
from events.bus import Bus
from events.consume import ConsumerSpec, Delivery, run_ordered
from events.errors import while_unavailable
from events.jobs import JobCancelled, JobCompleted, JobFailed
from events.kv import Bucket, Entry
from events.subjects import batch_id_of, job_id_of
from projections.batch_status import (
    BatchView,
    LineEnd,
    apply_batch_event,
    apply_line_ends,
    decode_view,
    encode_view,
)
from projections.batch_views import index_batch
from services.settings import Settings

_NOT_A_LINE = ""  # the lane of every job end that is no batch's line: acked unread


def line_lane(subject: str) -> str:
    """The batch a JOBS subject's job is a line of (`_NOT_A_LINE` for any other job)."""
    line = line_of(job_id_of(subject))
    return line[0] if line else _NOT_A_LINE


class BatchStatusProjector:
    """Folds BATCHES and the ends of batch lines into the batches bucket."""

    def __init__(self, bus: Bus, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings
        self.names = bus.names

    def batches_consumer(self) -> ConsumerSpec:
        """This instance's durable consumer on BATCHES."""
        return ConsumerSpec(
            stream=self.names.batches_stream,
            durable=f"batch-status-{self.settings.instance_id}",
            filter_subjects=(self.names.batches_all,),
            inactive_threshold_s=7 * 24 * 3600.0,
            ack_all=True,
            description="dim batch-status projector instance: batch events",
        )

    def lines_consumer(self) -> ConsumerSpec:
        """This instance's durable consumer on the ends of jobs (those of batch lines count)."""
        return ConsumerSpec(
            stream=self.names.jobs_stream,
            durable=f"batch-lines-{self.settings.instance_id}",
            filter_subjects=tuple(
                self.names.job("*", t.type) for t in (JobCompleted, JobFailed, JobCancelled)
            ),
            inactive_threshold_s=7 * 24 * 3600.0,
            max_ack_pending=10_000,
            ack_all=True,
            description="dim batch-status projector instance: ends of batch lines",
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Project until `stop` is set."""
        kv = await while_unavailable(
            lambda: self.bus.bucket("batches"), stop, "open the batches bucket"
        )

        async def batch_events(group: list[Delivery]) -> None:
            batch_id = batch_id_of(group[0].subject)

            def fold(view: BatchView | None) -> BatchView | None:
                for d in group:
                    view = apply_batch_event(view, d.envelope, d.stream_seq)
                return view

            view = await _change(kv, batch_id, fold)
            if view is not None:  # (again, after a crash between the two writes)
                await index_batch(self.bus, view)

        async def line_ends(group: list[Delivery]) -> None:
            batch_id = line_lane(group[0].subject)
            ends: list[tuple[int, int, LineEnd]] = []
            for d in group:
                line = line_of(job_id_of(d.subject))
                event = d.envelope.data
                if line is not None and isinstance(event, JobCompleted | JobFailed | JobCancelled):
                    ends.append((d.stream_seq, line[1], event))
            await _change(kv, batch_id, lambda view: apply_line_ends(view, batch_id, ends))

        await asyncio.gather(
            run_ordered(
                self.bus,
                self.batches_consumer(),
                batch_events,
                key=batch_id_of,
                stop=stop,
                linger_s=self.settings.projector_linger_ms / 1000,
            ),
            run_ordered(
                self.bus,
                self.lines_consumer(),
                line_ends,
                key=line_lane,
                seen=lambda lane, _seq: lane == _NOT_A_LINE,
                stop=stop,
                max_batch=1024,
                linger_s=self.settings.projector_linger_ms / 1000,
            ),
        )


async def _change(
    kv: Bucket, batch_id: str, fold: Callable[[BatchView | None], BatchView | None]
) -> BatchView | None:
    """Write the batch's view as `fold` changes it (compare-and-set, read again on a lost race);
    the view as it stands after."""
    now: BatchView | None = None

    def modify(entry: Entry | None) -> bytes | None:
        nonlocal now
        before = decode_view(entry.value) if entry else None
        now = fold(before)
        return None if now is None or now == before else encode_view(now)

    await kv.change(batch_id, modify)
    return now
