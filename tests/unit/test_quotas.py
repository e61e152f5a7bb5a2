"""A tenant's daily tokens: a job reserves max_tokens for each of its tasks when admitted, and
gives them back when it ends, so many large jobs at once cannot overshoot the quota."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from events.inference import Prompt, SamplingParams
from events.jobs import JobSubmitted
from events.patterns import Collaborative
from events.subjects import Names
from gateway.errors import ApiError
from gateway.limits import Quotas
from gateway.principal import Principal
from projections.reservations import Reservation, Reservations, reservation_key
from projections.usage import TenantUsage, day_of, usage_key
from services.accounts.keys import KeyRecord
from services.jobs.bounds import reserved_tokens


def _ivy() -> Principal:
    return Principal(principal_id="ivy", tenant="thrifty", roles=("member",))


def test_a_fan_out_reserves_max_tokens_for_every_task() -> None:
    job = JobSubmitted(
        job_id="J",
        pattern="collaborative",
        model="m",
        params=SamplingParams(max_tokens=8),
        collaborative=Collaborative(inputs=tuple(Prompt(text="i") for _ in range(1000))),
    )
    assert reserved_tokens(job) == 8000


def test_reservations_hold_back_the_quota_until_the_job_ends() -> None:
    usage: Any = SimpleNamespace(items={})
    reservations = Reservations(SimpleNamespace(names=Names("t")))  # type: ignore[arg-type]
    quotas = Quotas(usage, daily_tokens=100, reservations=reservations)
    quotas.check(_ivy(), 60)
    key = reservation_key("thrifty", "J1")
    # a job admitted (here, or by another gateway: its watch delivers the entry)
    reservations.changed(key, Reservation(tenant="thrifty", tokens=60))
    with pytest.raises(ApiError) as over:  # 60 reserved + 60 more > 100
        quotas.check(_ivy(), 60)
    assert over.value.status == 429 and over.value.param == "max_tokens"
    assert "40 of its 100 left" in over.value.message
    quotas.check(_ivy(), 40)  # what is left still goes
    reservations.changed(key, Reservation(tenant="thrifty", tokens=60))  # delivered twice
    assert reservations.by_tenant["thrifty"] == 60
    reservations.changed(key, None)  # the projector folded the job's end
    quotas.check(_ivy(), 60)  # back once the job ended
    with pytest.raises(ApiError):
        quotas.check(_ivy(), 101)  # more than the whole quota


def _record(key_id: str, daily_tokens: int) -> KeyRecord:
    return KeyRecord(
        key_id=key_id,
        principal_id="ivy",
        tenant="thrifty",
        roles=("member",),
        secret_sha256="0" * 64,
        created_at=datetime(2026, 11, 22, tzinfo=UTC),
        daily_tokens=daily_tokens,
    )


def test_a_keys_daily_budget_holds_back_its_jobs_and_no_other_keys() -> None:
    today = usage_key("thrifty", day_of(datetime.now(UTC)))
    used = TenantUsage(tenant="thrifty", day="d", prompt_tokens=30, by_key={"K1": 30})
    usage: Any = SimpleNamespace(items={today: used})
    keys: Any = SimpleNamespace(items={"K1": _record("K1", 100), "K2": _record("K2", 0)})
    reservations = Reservations(SimpleNamespace(names=Names("t")))  # type: ignore[arg-type]
    quotas = Quotas(usage, daily_tokens=0, reservations=reservations, keys=keys)
    k1 = Principal("ivy", "thrifty", ("member",), key_id="K1")
    k2 = Principal("ivy", "thrifty", ("member",), key_id="K2")
    assert quotas.reserves(k1) and not quotas.reserves(k2) and not quotas.reserves(_ivy())
    quotas.check(k1, 70)  # 30 used + 70: exactly the budget
    with pytest.raises(ApiError) as over:  # the bound is checked before the job is accepted
        quotas.check(k1, 71)
    error = over.value
    assert error.status == 429 and error.code == "key_budget_exceeded"
    assert error.param == "max_tokens" and int(error.headers["retry-after"]) > 0
    assert "API key K1 has 70 of its daily budget of 100 tokens left (30 used" in error.message
    assert "resets at 00:00 UTC" in error.message
    # a running job of K1 (admitted here or at another gateway) holds 60 of it
    reservations.changed("thrifty.J1", Reservation(tenant="thrifty", tokens=60, key_id="K1"))
    assert reservations.by_key["K1"] == 60 and reservations.by_tenant["thrifty"] == 60
    with pytest.raises(ApiError):
        quotas.check(k1, 11)
    quotas.check(k1, 10)
    quotas.check(k2, 10_000)  # another key of the tenant, without a budget: not held back
    quotas.check(_ivy(), 10_000)  # a session: no key, no budget
    reservations.changed("thrifty.J2", Reservation(tenant="thrifty", tokens=10, key_id="K1"))
    with pytest.raises(ApiError) as spent:  # 30 + 70 reserved: nothing left
        quotas.check(k1, 1)
    assert spent.value.param is None and "used 100 of its daily budget of 100" in (
        spent.value.message
    )
    reservations.changed("thrifty.J1", None)
    reservations.changed("thrifty.J2", None)
    assert "K1" not in reservations.by_key
    quotas.check(k1, 70)


def test_the_tenants_quota_and_the_keys_budget_both_hold() -> None:
    today = usage_key("thrifty", day_of(datetime.now(UTC)))
    used = TenantUsage(tenant="thrifty", day="d", prompt_tokens=90, by_key={"K1": 10})
    usage: Any = SimpleNamespace(items={today: used})
    keys: Any = SimpleNamespace(items={"K1": _record("K1", 1_000)})
    reservations = Reservations(SimpleNamespace(names=Names("t")))  # type: ignore[arg-type]
    quotas = Quotas(usage, daily_tokens=100, reservations=reservations, keys=keys)
    k1 = Principal("ivy", "thrifty", ("member",), key_id="K1")
    with pytest.raises(ApiError) as over:  # the key has room, its tenant has not
        quotas.check(k1, 20)
    assert over.value.code == "quota_exceeded"
