"""The audit: are the accepted jobs all finished, once, with usage counted once?

`audit` is pure: it compares the jobs a client had accepted (202 or 200 with a job id) with the
log — every job's history in JOBS — and the usage read model:

- lost: accepted, but no terminal event (completed, failed, cancelled) in the log;
- duplicated: more than one terminal event, or more than one ``job.completed``, for one job;
- unexpected: a job in the log that nobody accepted (a submit that was never acknowledged is
  fine to have run; it is reported, not counted as an error);
- usage: per tenant and day, the usage projection against the sum over ``job.completed``.

`collect` reads what `audit` needs from NATS; `dim audit` prints it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from events.bus import Bus
from events.envelope import Envelope
from events.history import read_events
from events.jobs import TERMINAL_TYPES, JobCompleted, JobSubmitted
from projections.usage import USAGE_TOTALS, TenantUsage, day_of


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What the audit found."""

    accepted: int
    in_log: int
    completed: int
    failed: int
    cancelled: int
    lost: tuple[str, ...] = ()
    duplicated: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    usage_mismatches: tuple[str, ...] = ()
    failures: dict[str, int] = field(default_factory=dict)  # job.failed codes

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing duplicated, usage counted once."""
        return not (self.lost or self.duplicated or self.usage_mismatches)


def audit(
    histories: Mapping[str, list[Envelope]],
    accepted: Iterable[str],
    usage: Iterable[TenantUsage] | None = None,
) -> AuditReport:
    """Compare accepted jobs with the log (and the usage projection, if given)."""
    accepted = set(accepted)
    ends: dict[str, list[str]] = {}
    failures: dict[str, int] = defaultdict(int)
    counted: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for job_id, events in histories.items():
        ends[job_id] = [e.type for e in events if e.type in TERMINAL_TYPES]
        for e in events:
            if e.type == "job.failed":
                failures[getattr(e.data, "code", "?")] += 1
            if isinstance(e.data, JobCompleted) and e.data.tenant is not None:
                c = counted[(e.data.tenant, day_of(e.at))]
                c[0] += 1
                c[1] += e.data.usage.prompt_tokens
                c[2] += e.data.usage.completion_tokens
    submitted = {
        j
        for j, events in histories.items()
        if any(isinstance(e.data, JobSubmitted) for e in events)
    }
    mismatches: list[str] = []
    if usage is not None:
        projected = {
            (u.tenant, u.day): [u.requests, u.prompt_tokens, u.completion_tokens] for u in usage
        }
        for key in sorted(set(projected) | set(counted)):
            want, have = counted.get(key, [0, 0, 0]), projected.get(key, [0, 0, 0])
            if want != have:
                mismatches.append(
                    f"{key[0]} {key[1]}: log says requests/prompt/completion {want}, "
                    f"usage projection {have}"
                )
    types = [t for e in ends.values() for t in e]
    return AuditReport(
        accepted=len(accepted),
        in_log=len(submitted),
        completed=types.count("job.completed"),
        failed=types.count("job.failed"),
        cancelled=types.count("job.cancelled"),
        lost=tuple(sorted(j for j in accepted if not ends.get(j))),
        duplicated=tuple(
            sorted(j for j, e in ends.items() if len(e) > 1 or e.count("job.completed") > 1)
        ),
        unexpected=tuple(sorted(submitted - accepted)) if accepted else (),
        usage_mismatches=tuple(mismatches),
        failures=dict(failures),
    )


async def collect(bus: Bus) -> tuple[dict[str, list[Envelope]], list[TenantUsage]]:
    """Every job's history from JOBS and every usage record."""
    histories: dict[str, list[Envelope]] = defaultdict(list)
    names = bus.names
    async for _, envelope in read_events(bus, names.jobs_stream, names.jobs_all):
        job_id = getattr(envelope.data, "job_id", None)
        if isinstance(job_id, str):
            histories[job_id].append(envelope)
    kv = await bus.bucket("usage")
    records: list[TenantUsage] = []
    for key in await kv.keys(USAGE_TOTALS):  # each tenant's day (not its detail)
        entry = await kv.get(key)
        if entry:
            records.append(TenantUsage.model_validate_json(entry.value))
    return dict(histories), records


def counts(report: AuditReport) -> list[tuple[str, int]]:
    """What the report counted, in the order it is shown."""
    return [
        ("jobs accepted", report.accepted),
        ("jobs in the log", report.in_log),
        ("completed", report.completed),
        ("failed", report.failed),
        ("cancelled", report.cancelled),
        ("lost", len(report.lost)),
        ("duplicated", len(report.duplicated)),
        ("unexpected (never acknowledged)", len(report.unexpected)),
        ("usage mismatches", len(report.usage_mismatches)),
    ]


def findings(report: AuditReport) -> list[str]:
    """The ids of whatever is wrong (20 of each at most), and the failure codes."""
    out = []
    for title, items in (
        ("lost", report.lost),
        ("duplicated", report.duplicated),
        ("usage", report.usage_mismatches),
    ):
        out += [f"{title}: {i}" for i in items[:20]]
    if report.failures:
        out.append(
            "failure codes: " + ", ".join(f"{k} {v}" for k, v in sorted(report.failures.items()))
        )
    return out


def render(report: AuditReport) -> str:
    """The report as a small table and the ids of whatever is wrong."""
    out = [f"| {k:<32} | {v:>8} |" for k, v in counts(report)]
    return "\n".join(out + findings(report))
