"""The projector process: keeps the jobs bucket equal to the fold of JOBS, and rebuilds it.

Writes are coalesced: a batch's events are grouped per job and each job's view is written once
per batch, with compare-and-set on the key's revision so two projector instances never
overwrite each other with an older view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial

from events.bus import Bus
from events.consume import ConsumerSpec, Delivery, run_ordered
from events.errors import WrongLastSequence, while_unavailable
from events.history import read_events
from events.job_log import history
from events.jobs import JobCompleted, JobSubmitted
from events.kv import Bucket, Entry
from events.retry import VIEW_WRITE
from events.subjects import job_id_of
from projections.job_state import JobState
from projections.job_status import apply, decode_view, encode_view, fold, stored_form
from projections.job_views import index_job
from projections.reservations import Reservations
from projections.usage import TenantUsage, add, day_of, usage_key
from projections.usage_detail import UsageDetail, add_detail, detail_key
from services.metrics import ProjectorMetrics
from services.registry.trust import Trust
from services.settings import Settings

log = logging.getLogger(__name__)

_CACHE = 50_000
HEAL_EVERY_S = 5.0  # how often views that could not be stored are tried again


class JobStatusProjector:
    """Folds JOBS into the jobs bucket."""

    def __init__(
        self, bus: Bus, settings: Settings, metrics: ProjectorMetrics | None = None
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.names = bus.names
        self.metrics = metrics or ProjectorMetrics()
        # job -> its view as stored (trimmed, if it was), and the key's revision
        self.cache: OrderedDict[str, tuple[JobState, int]] = OrderedDict()
        self._kv: Bucket | None = None
        self.trust = Trust(bus, settings.signed_only)
        self.reservations = Reservations(bus)  # of running jobs: removed as each one ends

    def consumer(self) -> ConsumerSpec:
        """This instance's durable consumer on JOBS."""
        return ConsumerSpec(
            stream=self.names.jobs_stream,
            durable=f"projector-{self.settings.instance_id}",
            filter_subjects=(self.names.jobs_all,),
            inactive_threshold_s=7 * 24 * 3600.0,
            max_ack_pending=10_000,
            ack_all=True,
            description="dim job-status projector instance",
        )

    async def kv(self) -> Bucket:
        """The jobs bucket."""
        if self._kv is None:
            self._kv = await self.bus.bucket("jobs")
        return self._kv

    async def run(self, stop: asyncio.Event) -> None:
        """Project until `stop` is set."""
        await while_unavailable(self.kv, stop, "open the jobs bucket")
        await while_unavailable(self.trust.start, stop, "load the enrolled node keys")
        await while_unavailable(self.reservations.start, stop, "load the quota reservations")
        healer = asyncio.create_task(self._heal(stop))
        try:
            await run_ordered(
                self.bus,
                self.consumer(),
                self.handle,
                key=job_id_of,
                seen=self.seen,
                stop=stop,
                max_batch=1024,
                linger_s=self.settings.projector_linger_ms / 1000,
            )
        finally:
            healer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await healer
            await self.reservations.stop()
            await self.trust.stop()

    async def _release(self, view: JobState) -> None:
        """The job ended: its quota reservation goes (a failure is left to the bucket's TTL)."""
        try:
            await self.reservations.release(view.tenant, view.job_id)
        except Exception as exc:
            log.warning(
                "job %s: its quota reservation stays until it expires: %r", view.job_id, exc
            )

    async def _heal(self, stop: asyncio.Event) -> None:
        """Every `HEAL_EVERY_S`, write again from their logs the views that could not be stored
        (their events may have been dead-lettered since: nothing else would write them)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HEAL_EVERY_S)
            for job_id in list(self.metrics.behind):
                try:
                    await self.rewrite(job_id)
                except Exception as exc:
                    log.warning("job %s: its view is still behind its log: %r", job_id, exc)

    async def rewrite(self, job_id: str) -> None:
        """Store the job's view folded from its whole log (unless a newer one is stored)."""
        believe = self.trust.believe if self.trust.required else None
        view = fold(None, await history(self.bus, job_id), believe)
        kv = await self.kv()
        entry = await kv.get(job_id)
        before = decode_view(entry.value) if entry is not None else None
        if view is None or (before is not None and before.last_seq >= view.last_seq):
            self.metrics.caught_up(job_id)  # no job, or another writer stored a newer view
            self.cache.pop(job_id, None)
            return
        stored, raw = stored_form(view)
        revision = await kv.write(job_id, raw, entry.revision if entry else None)
        log.info("job %s: its view is stored again (%d bytes)", job_id, len(raw))
        await self._written(job_id, before, view, stored, revision)

    async def _written(
        self, job_id: str, before: JobState | None, new: JobState, stored: JobState, revision: int
    ) -> None:
        """`new` (`before` it, what was stored) is stored as `stored` at `revision`: counted,
        cached, and if the job ended with it, its quota reservation removed. The mirror may not
        show a reservation made a moment ago yet: with quotas on, or a job that says it holds
        one (`reserved`, a key's budget), it is removed regardless (a no-op if none)."""
        self.metrics.written(job_id, stored.trimmed)
        self.cache[job_id] = (stored, revision)
        self.cache.move_to_end(job_id)
        if len(self.cache) > _CACHE:
            self.cache.popitem(last=False)
        ended = new.terminal and (before is None or not before.terminal)
        quotas_on = self.settings.tenant_daily_tokens > 0
        if ended and (quotas_on or new.reserved or self.reservations.held(new.tenant, job_id)):
            await self._release(new)

    def seen(self, job_id: str, seq: int) -> bool:
        """Whether this instance already wrote a view that includes the event at `seq`."""
        cached = self.cache.get(job_id)
        return cached is not None and seq <= cached[0].last_seq

    async def handle(self, group: list[Delivery]) -> None:
        """Apply one job's new events and write its view once."""
        job_id = job_id_of(group[0].subject)
        kv = await self.kv()
        # A job's first event is always job.submitted (appended with expected sequence 0),
        # so a group that starts with it is a new job: no view to read.
        new_job = isinstance(group[0].envelope.data, JobSubmitted) and job_id not in self.cache
        believe = await self.trust.screen(self.bus, self.consumer().durable, group)
        for _ in range(VIEW_WRITE.tries or 1):
            if new_job:
                view, revision, new_job = None, None, False
            else:
                view, revision = await self._current(kv, job_id)
            new = fold(view, ((d.stream_seq, d.envelope) for d in group), believe)
            if new is None or new is view:
                return
            if view is None:  # a new job: in its tenant's index first (a listing skips an
                # entry whose view is not written yet; it never misses a written one)
                await index_job(self.bus, new)
            stored, raw = stored_form(new)
            try:
                revision = await kv.write(job_id, raw, revision)
            except WrongLastSequence:
                self.cache.pop(job_id, None)  # another writer: read again and refold
                continue
            except Exception as exc:
                # loud, not only a dead letter: the view stays behind the log until rebuilt
                log.error(
                    "job %s: its view (%d bytes) could not be stored: %r; it lags the log "
                    "until this succeeds or `dim projections rebuild` runs",
                    job_id,
                    len(raw),
                    exc,
                )
                self.metrics.failed(job_id, f"{len(raw)} bytes: {exc!r}"[:300])
                raise
            await self._written(job_id, view, new, stored, revision)
            return
        raise RuntimeError(f"job {job_id}: view kept changing under us; will retry")

    async def _current(self, kv: Bucket, job_id: str) -> tuple[JobState | None, int | None]:
        cached = self.cache.get(job_id)
        if cached is not None:
            return cached
        entry = await kv.get(job_id)
        if entry is None:
            return None, None
        return decode_view(entry.value), entry.revision


@dataclass(slots=True)
class RebuildReport:
    """What a rebuild found (and, unless checking, did)."""

    jobs: int = 0
    events: int = 0
    written: int = 0
    unchanged: int = 0
    skipped_newer: int = 0
    deleted: int = 0
    differences: list[str] = field(default_factory=list)


async def rebuild(
    bus: Bus, *, check_only: bool = False, trust: Trust | None = None
) -> RebuildReport:
    """Replay JOBS from the start and make the jobs bucket equal to the result.

    With `check_only`, write nothing and list the views that differ. A view the live projector
    has already advanced past the replay's end is left as it is. With a `trust` (started),
    node reports it does not believe are left out, as the live projector leaves them out.
    """
    names = bus.names
    report = RebuildReport()
    views: dict[str, JobState] = {}
    believe = trust.believe if trust is not None and trust.required else None
    async for seq, envelope in read_events(bus, names.jobs_stream, names.jobs_all):
        report.events += 1
        apply(views, seq, envelope, believe)
    report.jobs = len(views)
    horizon = max((v.last_seq for v in views.values()), default=0)
    kv = await bus.bucket("jobs")
    for job_id, view in views.items():
        want = encode_view(view)
        entry = await kv.get(job_id)
        have, revision = (entry.value, entry.revision) if entry else (None, None)
        if have == want:
            report.unchanged += 1
            continue
        if have is not None and decode_view(have).last_seq > view.last_seq:
            report.skipped_newer += 1
            continue
        report.differences.append(job_id)
        if check_only:
            continue
        await index_job(bus, view)
        await kv.write(job_id, want, revision)
        report.written += 1
    for key in await kv.keys():
        if key in views:
            continue
        entry = await kv.get(key)
        if entry is not None and decode_view(entry.value).last_seq > horizon:
            continue
        report.differences.append(key)
        if not check_only:
            await kv.delete(key)
            report.deleted += 1
    return report


class UsageProjector:
    """Folds job.completed into the usage bucket: tokens per tenant per day (and per key, for
    quotas and key budgets), and each day in detail (per owner, key, model and end user)."""

    def __init__(self, bus: Bus, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings
        self.names = bus.names

    def consumer(self) -> ConsumerSpec:
        """This instance's durable consumer on completed jobs."""
        return ConsumerSpec(
            stream=self.names.jobs_stream,
            durable=f"usage-{self.settings.instance_id}",
            filter_subjects=(self.names.job("*", "job.completed"),),
            inactive_threshold_s=7 * 24 * 3600.0,
            max_ack_pending=10_000,
            ack_all=True,
            description="dim usage projector instance",
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Project until `stop` is set."""
        kv = await while_unavailable(
            lambda: self.bus.bucket("usage"), stop, "open the usage bucket"
        )

        async def handle(group: list[Delivery]) -> None:
            # One lane for all: usage of a tenant comes from many jobs, applied in stream order.
            # Each tenant's day: its total and its detail, two writes per batch (at once).
            by_day: dict[tuple[str, str], list[Delivery]] = {}
            for d in group:
                event = d.envelope.data
                if isinstance(event, JobCompleted) and event.tenant is not None:
                    by_day.setdefault((event.tenant, day_of(d.envelope.at)), []).append(d)
            for (tenant, day), deliveries in by_day.items():
                await asyncio.gather(
                    kv.change(usage_key(tenant, day), partial(_counted, deliveries)),
                    kv.change(detail_key(tenant, day), partial(_detailed, deliveries)),
                )

        await run_ordered(
            self.bus,
            self.consumer(),
            handle,
            key=lambda _: "usage",
            stop=stop,
            max_batch=1024,
            linger_s=0.05,
        )


def _counted(deliveries: list[Delivery], entry: Entry | None) -> bytes | None:
    """The usage record `entry` holds with `deliveries` counted in (each once, by sequence)."""
    record = TenantUsage.model_validate_json(entry.value) if entry else None
    for d in deliveries:
        record = add(record, d.envelope, d.stream_seq)
    return record.model_dump_json().encode() if record else None


def _detailed(deliveries: list[Delivery], entry: Entry | None) -> bytes | None:
    """The day in detail `entry` holds with `deliveries` counted in (each once, by sequence)."""
    record = UsageDetail.model_validate_json(entry.value) if entry else None
    new = add_detail(record, ((d.stream_seq, d.envelope) for d in deliveries))
    return new.model_dump_json().encode() if new is not None and new is not record else None
