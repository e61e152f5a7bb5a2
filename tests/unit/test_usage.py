from __future__ import annotations

from datetime import UTC, datetime

import pytest

from events.envelope import Envelope
from events.inference import Usage
from events.jobs import JobCompleted, Part
from projections.usage import USAGE_TOTALS, TenantUsage, add, key_tokens, usage_key
from projections.usage_breakdown import breakdown, matching, parse_dimensions
from projections.usage_detail import MAX_USER_CELLS, UsageDetail, add_detail, detail_key, shares


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


def _job(
    tenant: str = "acme",
    p: int = 2,
    c: int = 5,
    *,
    key: str | None = "K1",
    owner: str | None = "ann",
    model: str | None = "m",
    user: str | None = None,
    parts: tuple[Part, ...] = (),
    day: int = 22,
) -> Envelope:
    event = JobCompleted(
        job_id="J",
        output="x",
        finish_reason="stop",
        usage=Usage(prompt_tokens=p, completion_tokens=c),
        tenant=tenant,
        parts=parts,
        model=model,
        owner=owner,
        key_id=key,
        end_user=user,
    )
    return Envelope(event, actor="o", at=datetime(2026, 11, day, 12, tzinfo=UTC))


def test_the_days_total_counts_tokens_per_key_and_old_events_count_for_the_tenant_only() -> None:
    r = add(None, _job(key="K1"), seq=1)
    r = add(r, _job(key="K2", p=1, c=1), seq=2)
    r = add(r, _job(key="K1"), seq=3)
    r = add(r, _done("acme", 4, 4), seq=4)  # an event from before keys were recorded
    assert r is not None and r.by_key == {"K1": 14, "K2": 2}
    assert r.total_tokens == 24 and r.requests == 4
    assert key_tokens(r, "K1") == 14 and key_tokens(r, "K9") == 0 and key_tokens(None, "K1") == 0
    old = TenantUsage.model_validate_json(b'{"tenant": "a", "day": "2026-11-22", "requests": 1}')
    assert old.by_key == {}  # records stored before keys were counted still read


def _cells(detail: UsageDetail | None) -> dict[tuple[object, ...], tuple[int, int, int]]:
    assert detail is not None
    return {
        (c.owner, c.key_id, c.model, c.user, c.other_users): (
            c.requests,
            c.prompt_tokens,
            c.completion_tokens,
        )
        for c in detail.cells
    }


def test_the_detail_counts_each_owner_key_model_and_user_once() -> None:
    d = add_detail(
        None,
        [
            (1, _job(key="K1", user="u1")),
            (2, _job(key="K1", user="u1", p=1, c=1)),
            (3, _job(key="K2", owner="bob", model="big", user="u2")),
            (4, _done("acme", 1, 1)),  # older: no owner, key, model or user
            (5, _job(tenant="globex")),  # another tenant's: not this record's
            (6, _job(day=23)),  # another day's: not this record's
        ],
    )
    assert d is not None and (d.tenant, d.day, d.last_seq) == ("acme", "2026-11-22", 4)
    assert _cells(d) == {
        ("ann", "K1", "m", "u1", False): (2, 3, 6),
        ("bob", "K2", "big", "u2", False): (1, 2, 5),
        (None, None, None, None, False): (1, 1, 1),
    }
    assert add_detail(d, [(3, _job()), (4, _done("acme", 1, 1))]) is d  # redelivered: unchanged
    later = add_detail(d, [(4, _job()), (9, _job(user="u1"))])
    assert _cells(later)[("ann", "K1", "m", "u1", False)] == (3, 5, 11)  # only seq 9 counted
    again = UsageDetail.model_validate_json(later.model_dump_json()) if later else None
    assert again == later  # as stored and read back


def test_a_jobs_tokens_go_to_the_models_of_its_tasks_and_its_request_to_its_own() -> None:
    parts = (
        Part(
            task_id="J-0",
            role="candidate",
            index=0,
            model="a",
            status="completed",
            usage=Usage(prompt_tokens=2, completion_tokens=3),
        ),
        Part(
            task_id="J-1",
            role="candidate",
            index=1,
            model="b",
            status="completed",
            usage=Usage(prompt_tokens=2, completion_tokens=4),
        ),
        Part(
            task_id="J-2",
            role="candidate",
            index=2,
            model="c",
            status="failed",
            usage=Usage(prompt_tokens=9, completion_tokens=9),
        ),
    )
    event = _job(p=4, c=7, model="b", parts=parts).data
    assert isinstance(event, JobCompleted)
    assert shares(event) == [
        ("a", Usage(prompt_tokens=2, completion_tokens=3)),
        ("b", Usage(prompt_tokens=2, completion_tokens=4)),
    ]
    d = add_detail(None, [(1, _job(p=4, c=7, model="b", parts=parts))])
    assert _cells(d) == {
        ("ann", "K1", "a", None, False): (0, 2, 3),
        ("ann", "K1", "b", None, False): (1, 2, 4),
    }
    # parts that do not add up to the job's usage: all of it under the job's model
    odd = _job(p=40, c=7, model="z", parts=parts).data
    assert isinstance(odd, JobCompleted)
    assert shares(odd) == [("z", Usage(prompt_tokens=40, completion_tokens=7))]
    # a job whose own model ran none of its tasks: its request goes to the first share
    d = add_detail(None, [(1, _job(p=4, c=7, model="judge-less", parts=parts))])
    assert d is not None and sum(c.requests for c in d.cells) == 1


def test_end_users_beyond_the_bound_of_a_day_are_counted_together() -> None:
    many = [(i + 1, _job(user=f"u{i}", p=1, c=0)) for i in range(MAX_USER_CELLS + 5)]
    d = add_detail(None, many)
    assert d is not None
    named = [c for c in d.cells if c.user is not None]
    (others,) = [c for c in d.cells if c.other_users]
    assert len(named) == MAX_USER_CELLS and others.requests == 5 and others.user is None
    assert sum(c.prompt_tokens for c in d.cells) == MAX_USER_CELLS + 5  # nothing lost
    d = add_detail(d, [(10_000, _job(user="u3", p=1, c=0))])  # a known one is still its own
    assert d is not None and len(d.cells) == MAX_USER_CELLS + 1


def test_the_detail_key_sits_beside_the_days_total_and_is_not_mirrored_with_it() -> None:
    assert detail_key("a.b c", "2026-11-22") == "a_2Eb_20c.2026-11-22.detail"
    assert USAGE_TOTALS == "*.*"  # what gateways mirror: two tokens, never the detail's three


def test_a_breakdown_groups_a_readers_cells_per_day() -> None:
    d22 = add_detail(
        None,
        [
            (1, _job(key="K1", user="u1", p=1, c=1)),
            (2, _job(key="K1", model="big", user="u2", p=5, c=5)),
            (3, _job(key="K2", owner="bob", user="u1", p=3, c=3)),
            (4, _job(key=None, owner="ann", p=1, c=0)),  # a session's job: no key
        ],
    )
    d23 = add_detail(None, [(5, _job(key="K1", day=23, p=1, c=1))])
    assert d22 is not None and d23 is not None
    days = [d22, d23]
    by_key = breakdown(days, ("key",))
    assert [(r.day, r.key_id, r.owner, r.total_tokens, r.requests) for r in by_key] == [
        ("2026-11-23", "K1", "ann", 2, 1),
        ("2026-11-22", "K1", "ann", 12, 2),
        ("2026-11-22", "K2", "bob", 6, 1),
        ("2026-11-22", None, "ann", 1, 1),
    ]
    assert all(r.model is None and r.user is None for r in by_key)
    mine = breakdown(days, ("model", "user"), matching(owner="ann"))
    assert [(r.day, r.model, r.user, r.total_tokens) for r in mine] == [
        ("2026-11-23", "m", None, 2),
        ("2026-11-22", "big", "u2", 10),
        ("2026-11-22", "m", "u1", 2),
        ("2026-11-22", "m", None, 1),
    ]
    per_day = breakdown(days, (), matching(user="u1"))
    assert [(r.day, r.requests, r.total_tokens) for r in per_day] == [("2026-11-22", 2, 8)]
    assert breakdown(days, ("key",), matching(key_id="K9")) == []


def test_group_by_names_are_checked() -> None:
    assert parse_dimensions("user, key") == ("key", "user")
    assert parse_dimensions("") == ()
    with pytest.raises(ValueError, match="'tenant'"):
        parse_dimensions("key,tenant")
