"""A tenant's daily tokens: a job reserves max_tokens for each of its tasks when admitted, and
gives them back when it ends, so many large jobs at once cannot overshoot the quota."""

from __future__ import annotations

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
