"""Which nodes, and which of their reports, to believe.

On a secured bus (`Settings.signed_only`) a node is believed only when the key an admin enrolled
for it signs what it says: its record (events/signing.py) and its task reports (`task.started`,
`task.completed`, `task.failed`). A record not so signed keeps the node out of selection, so an
unknown key never receives work; a report not so signed is not folded into the job — the job
stays as it was, waiting for the real result — and is recorded as `report.refused` on the DEAD
stream by whoever refused it. The orchestrator's own verdicts (`task.lost`) are no node's
report: only the orchestrator's identity may write them.

On an open bus there are no keys to check against and everything is believed, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from events.bus import Bus
from events.consume import Delivery
from events.envelope import Envelope, Event
from events.records import EnrolledKey
from events.signing import Report, is_report, report_verified
from events.watched import WatchedBucket
from events.work import ReportRefused

log = logging.getLogger(__name__)


class EnrolledKeys(WatchedBucket[EnrolledKey]):
    """The enrolled bucket mirrored in memory, node id → key; `listeners` hear of each change
    (a node approved, re-keyed or revoked)."""

    def __init__(self, bus: Bus) -> None:
        super().__init__(bus, bus.names.bucket("enrolled"), EnrolledKey)
        self.listeners: list[Callable[[str], None]] = []

    def changed(self, key: str, item: EnrolledKey | None) -> None:
        for listener in self.listeners:
            listener(key)


class Trust:
    """What a process believes of the nodes (`required`: only what their enrolled keys sign)."""

    def __init__(self, bus: Bus, required: bool) -> None:
        self.required = required
        self.enrolled = EnrolledKeys(bus)
        self.refused = 0  # reports not believed since start

    async def start(self) -> None:
        """Load the enrolled keys and follow them."""
        await self.enrolled.start()

    async def stop(self) -> None:
        await self.enrolled.stop()

    def refusal(self, event: Event) -> str | None:
        """Why `event` is not believed; None when it is (anything but a node's report, every
        report on an open bus, a report its node's enrolled key signed)."""
        if not self.required or not is_report(event):
            return None
        report: Report = event  # type: ignore[assignment]
        node = report.node_id
        key = self.enrolled.items.get(node) if node else None
        what = f"{report.type} of task {report.task_id} attempt {report.attempt}"
        if key is None:
            return f"{what} names node {node!r}, which has no enrolled key"
        if not report_verified(report, key.public_key):
            sign = "is not signed" if not report.signature else "carries a signature that is not"
            return f"{what} {sign} by the key enrolled for node {node}"
        return None

    def believe(self, event: Event) -> bool:
        """Whether `event` is believed (no `refusal`)."""
        return self.refusal(event) is None

    async def screen(
        self, bus: Bus, by: str, group: list[Delivery]
    ) -> Callable[[Event], bool] | None:
        """Judge each event of `group` once, recording every refusal as `by`'s; what to fold
        with: a `believe` for this group's events, or None when all are believed."""
        refused: set[int] = set()
        for d in group:
            reason = self.refusal(d.envelope.data)
            if reason is not None:
                refused.add(id(d.envelope.data))
                await record_refusal(bus, by, d, reason)
        return (lambda e: id(e) not in refused) if refused else None


async def record_refusal(bus: Bus, by: str, delivery: Delivery, reason: str) -> None:
    """Keep a refused report, and why, on the DEAD stream (once per reader and report: the
    record's id comes from the report's)."""
    envelope = delivery.envelope
    report: Report = envelope.data  # type: ignore[assignment]
    log.warning("%s: refused %s seq %d: %s", by, delivery.subject, delivery.stream_seq, reason)
    record = ReportRefused(
        by=by,
        subject=delivery.subject,
        stream_seq=delivery.stream_seq,
        event_id=envelope.id,
        event_type=envelope.type,
        actor=envelope.actor,
        job_id=report.job_id,
        task_id=report.task_id,
        attempt=report.attempt,
        node_id=report.node_id,
        reason=reason,
    )
    await bus.publish(
        bus.names.dead(by), Envelope(record, actor=by, id=f"refused-{by}-{envelope.id}")
    )
