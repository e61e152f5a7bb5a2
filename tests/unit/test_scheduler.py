"""The fair queue: a bound per model, then priority, then round-robin across tenants."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.jobs.admission import FairQueue


def test_below_the_depth_everything_goes_at_once() -> None:
    q = FairQueue(depth=2)
    assert q.admit("m", "a", 0, "j1") and q.admit("m", "a", 0, "j2")
    assert not q.admit("m", "a", 0, "j3")  # the queue is full: held
    assert FairQueue(depth=0).admit("m", "a", 0, "any")  # no bound


def test_a_flooding_tenant_queues_behind_itself() -> None:
    q = FairQueue(depth=1)
    assert q.admit("m", "flood", 0, "f0")
    for i in range(1, 6):
        assert not q.admit("m", "flood", 0, f"f{i}")
    assert not q.admit("m", "polite", 0, "p0")
    order = []
    for _ in range(6):
        q.started("m")  # the waiting task was taken by a worker
        (next_job,) = q.release("m")
        order.append(next_job)
        assert q.admit("m", "?", 0, next_job)  # granted: it goes now
    assert order.index("p0") <= 1  # the polite tenant's job is next or the one after
    assert [j for j in order if j != "p0"] == ["f1", "f2", "f3", "f4", "f5"]


def test_higher_priority_goes_first() -> None:
    q = FairQueue(depth=1)
    assert q.admit("m", "a", 0, "first")
    assert not q.admit("m", "a", 0, "low")
    assert not q.admit("m", "b", 9, "urgent")
    q.started("m")
    assert q.release("m") == ["urgent"]


def test_a_held_job_that_ends_leaves_the_queue() -> None:
    q = FairQueue(depth=1)
    q.admit("m", "a", 0, "x")
    q.admit("m", "a", 0, "gone")
    q.drop("gone")
    q.started("m")
    assert q.release("m") == [] and not q.held


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 2)), min_size=1, max_size=40))
def test_never_more_than_the_depth_waits_and_every_job_gets_out(
    jobs: list[tuple[str, int]],
) -> None:
    q = FairQueue(depth=3)
    pending = []
    for i, (tenant, priority) in enumerate(jobs):
        if not q.admit("m", tenant, priority, f"j{i}"):
            pending.append(f"j{i}")
        assert q.waiting["m"] <= 3
    out = []
    for _ in range(len(jobs)):
        q.started("m")
        for j in q.release("m"):
            assert q.admit("m", "?", 0, j)
            out.append(j)
        assert q.waiting["m"] <= 3
    assert sorted(out) == sorted(pending) and not q.held
