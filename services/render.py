"""Terminal rendering of jobs, events and nodes for the CLI."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime

from events.envelope import Envelope
from events.records import NodeRecord
from projections.job_state import JobState
from services.table import clip, table, terminal_width


def _ago(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "-"
    s = (now - at).total_seconds()
    return (
        f"{s:.1f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"
    )


def jobs_table(views: list[JobState]) -> str:
    """One line per job."""
    now = datetime.now(UTC)
    rows = [
        [
            v.job_id,
            v.status,
            v.model,
            v.pattern,
            str(v.usage.total_tokens),
            _ago(v.created_at, now),
            (v.error or "")[:60],
        ]
        for v in views
    ]
    return table(
        ["JOB", "STATUS", "MODEL", "PATTERN", "TOKENS", "CREATED", "ERROR"], rows, optional=(3,)
    )


def job_detail(view: JobState | None, events: list[tuple[int, Envelope]]) -> str:
    """A job's view and its event history, fitted to the terminal (the output wrapped)."""
    width = terminal_width()
    out = []
    if view is not None:
        u = view.usage
        out += [
            f"job      {view.job_id}",
            f"status   {view.status}"
            + (f" ({view.error_code}: {view.error})" if view.error else ""),
            f"model    {view.model}   pattern {view.pattern}   owner {view.owner}   tenant {view.tenant}",
            f"usage    prompt {u.prompt_tokens}  completion {u.completion_tokens}  total {u.total_tokens}"
            + (f"   ttft {view.ttft_ms:.1f} ms" if view.ttft_ms is not None else ""),
        ]
        out = [clip(line, width) for line in out]
        if view.output is not None:
            out += _wrapped("output   ", view.output, width)
        out.append("")
    start = events[0][1].at if events else None
    rows = []
    for seq, e in events:
        offset = f"+{(e.at - start).total_seconds() * 1000:.1f}ms" if start else ""
        rows.append(
            [str(seq), e.at.strftime("%H:%M:%S.%f")[:-3], offset, e.type, e.actor, _summary(e)]
        )
    out.append(
        table(["SEQ", "AT", "", "EVENT", "ACTOR", "DETAIL"], rows, optional=(2, 4), wrap=True)
    )
    return "\n".join(out)


def _wrapped(label: str, text: str, width: int) -> list[str]:
    """`text` after `label`, its lines wrapped to `width` (0: as they are) and indented."""
    import textwrap

    indent = " " * len(label)
    lines = text.split("\n")
    if width > len(label) + 10:
        lines = [part for line in lines for part in textwrap.wrap(line, width - len(label)) or [""]]
    return [clip((label if i == 0 else indent) + line, width) for i, line in enumerate(lines)]


def _summary(e: Envelope) -> str:
    d = e.data.model_dump(
        exclude={"job_id", "prompt", "params", "tasks", "output"}, exclude_none=True
    )
    return " ".join(f"{k}={v}" for k, v in d.items())[:100]


def nodes_table(nodes: list[NodeRecord], ttl_s: float, verified: Collection[str]) -> str:
    """One line per node; `verified`: the nodes whose record is signed by their enrolled key."""
    now = datetime.now(UTC)
    rows = [
        [
            n.node_id,
            "draining"
            if n.draining
            else ("live" if n.healthy else "unhealthy")
            if n.live(now, ttl_s)
            else "stale",
            ",".join(n.models),
            n.engine,
            f"{n.in_flight}/{n.capacity}",
            f"{n.in_flight / max(1, n.capacity):.0%}",
            str(n.tasks_completed),
            str(n.tasks_failed),
            str(n.tokens_out),
            f"{n.avg_latency_ms:.0f}ms" if n.tasks_completed else "-",
            ",".join(f"{g.name} {g.memory_free_mib}/{g.memory_total_mib}MiB" for g in n.gpus)
            or "-",
            _ago(n.started_at, now),
            _ago(n.heartbeat_at, now),
            ",".join(n.tenants) or "all",
            n.version,
            "yes" if n.node_id in verified else "no",
        ]
        for n in sorted(nodes, key=lambda n: n.node_id)
    ]
    return table(
        [
            "NODE",
            "STATE",
            "MODELS",
            "ENGINE",
            "IN-FLIGHT",
            "LOAD",
            "DONE",
            "FAILED",
            "TOKENS",
            "AVG",
            "GPUS",
            "STARTED",
            "HEARTBEAT",
            "TENANTS",
            "VERSION",
            "VERIFIED",
        ],
        rows,
        # dropped in this order where the terminal is too narrow for them all
        optional=(14, 11, 13, 10, 8, 7, 3, 5, 9),
    )
