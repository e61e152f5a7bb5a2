from __future__ import annotations

from datetime import UTC, datetime

from events.envelope import Envelope
from events.inference import Usage
from events.jobs import JobCompleted
from projections.usage import add, usage_key


def _done(tenant: str | None, p: int, c: int) -> Envelope:
    event = JobCompleted(
        job_id="J",
        output="x",
        finish_reason="stop",
        usage=Usage(prompt_tokens=p, completion_tokens=c),
        tenant=tenant,
    )
    return Envelope(event, actor="o", at=datetime(2026, 11, 22, 23, 59, tzinfo=UTC))


def test_usage_adds_up_once_per_event() -> None:
    r = add(None, _done("acme", 2, 5), seq=10)
    r = add(r, _done("acme", 1, 1), seq=12)
    again = add(r, _done("acme", 1, 1), seq=12)  # redelivered
    assert r is not None and again == r
    assert (r.requests, r.prompt_tokens, r.completion_tokens, r.total_tokens, r.last_seq) == (
        2,
        3,
        6,
        9,
        12,
    )
    assert (r.tenant, r.day) == ("acme", "2026-11-22")


def test_events_without_a_tenant_count_for_nobody() -> None:
    assert add(None, _done(None, 1, 1), seq=1) is None


def test_keys_are_safe_for_any_tenant_name() -> None:
    assert usage_key("a.b c", "2026-11-22") == "a_2Eb_20c.2026-11-22"
