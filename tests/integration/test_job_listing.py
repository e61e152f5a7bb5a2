"""A tenant's job listing reads its own jobs through the job index: never every tenant's views,
and a view that cannot be read is left out, not a 500 for everyone."""

from __future__ import annotations

from typing import Any

from events.bus import Bus
from events.envelope import Envelope
from events.ids import new_id
from events.inference import Prompt
from events.jobs import JobSubmitted
from projections.job_state import evolve
from projections.job_status import encode_view
from projections.job_views import index_job, newest_views


class Counting:
    """The jobs bucket, counting its reads."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.gets = inner, 0

    async def get(self, key: str) -> Any:
        self.gets += 1
        return await self.inner.get(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def _view(bus: Bus, tenant: str, owner: str) -> str:
    job_id = new_id()
    submitted = JobSubmitted(
        job_id=job_id, model="m", prompt=Prompt(text="q"), owner=owner, tenant=tenant
    )
    view = evolve(None, Envelope(submitted, actor="t"), 1)
    assert view is not None
    await index_job(bus, view)
    await (await bus.bucket("jobs")).put(job_id, encode_view(view))
    return job_id


async def test_a_listing_reads_only_its_tenants_jobs(bus: Bus) -> None:
    for _ in range(300):  # a busy tenant
        await _view(bus, "big", "u-1")
    mine = [await _view(bus, "small", "u-2") for _ in range(2)]
    theirs = await _view(bus, "small", "u-3")  # same tenant, another member
    broken = new_id()  # a view that cannot be read, in the small tenant's index
    await (await bus.bucket("job_index")).put(f"small.u-2.{broken}", b"")
    await (await bus.bucket("jobs")).put(broken, b"{not a view")
    jobs = Counting(await bus.bucket("jobs"))
    bus._buckets["jobs"] = jobs  # type: ignore[assignment]

    member = await newest_views(bus, lambda v: True, limit=50, tenant="small", owner="u-2")
    assert sorted(v.job_id for v in member) == sorted(mine)  # the broken one left out
    assert jobs.gets == 3  # its own entries only: not the other 301
    admin = await newest_views(bus, lambda v: True, limit=50, tenant="small")
    assert sorted(v.job_id for v in admin) == sorted([*mine, theirs])
    jobs.gets = 0
    assert await newest_views(bus, lambda v: True, limit=50, tenant="empty") == []
    assert jobs.gets == 0  # a tenant with no jobs reads none
