"""The fair queue: a bound per model, then priority, then round-robin across tenants."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from projections.job_state import JobState, TaskState
from services.jobs.admission import FairQueue


def test_below_the_depth_everything_goes_at_once() -> None:
    q = FairQueue(depth=2)
    assert q.admit("m", "a", 0, "j1") and q.admit("m", "a", 0, "j2")
    assert not q.admit("m", "a", 0, "j3")  # the queue is full: held
    assert FairQueue(depth=0).admit("m", "a", 0, "any")  # no bound


def test_free_slots_take_work_beyond_the_depth() -> None:
    """Work that a free slot takes at once does not wait, so it is not held for the depth:
    a fan-out on idle nodes goes at their full speed."""
    free = {"m": 3.0}
    q = FairQueue(depth=1, room=lambda model: free.get(model, 0.0))
    assert q.bound("m") == 4 and q.bound("other") == 1
    assert all(q.admit("m", "a", 0, f"j{i}") for i in range(4))
    assert not q.admit("m", "a", 0, "j4")
    free["m"] = -2.0  # an over-full estimate never lowers the depth itself
    assert q.bound("m") == 1


def test_a_flooding_tenant_queues_behind_itself() -> None:
    q = FairQueue(depth=1)
    assert q.admit("m", "flood", 0, "f0")
    for i in range(1, 6):
        assert not q.admit("m", "flood", 0, f"f{i}")
    assert not q.admit("m", "polite", 0, "p0")
    order = []
    for _ in range(6):
        q.started("m", "?")  # the waiting task was taken by a worker
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
    q.started("m", "?")
    assert q.release("m") == ["urgent"]


def test_a_held_job_that_ends_leaves_the_queue() -> None:
    q = FairQueue(depth=1)
    q.admit("m", "a", 0, "x")
    q.admit("m", "a", 0, "gone")
    q.drop("gone")
    q.started("m", "?")
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
        q.started("m", "?")
        for j in q.release("m"):
            assert q.admit("m", "?", 0, j)
            out.append(j)
        assert q.waiting["m"] <= 3
    assert sorted(out) == sorted(pending) and not q.held


def _state(job_id: str, tenant: str, priority: int, models: list[str]) -> JobState:
    """A job with one planned task per entry of `models` (only what admission reads)."""
    tasks = [TaskState.model_construct(task_id=f"t{i}", model=m) for i, m in enumerate(models)]
    return JobState.model_construct(
        job_id=job_id,
        tenant=tenant,
        priority=priority,
        tasks=tuple(tasks),
        created_at=datetime.now(UTC),
    )


def _snapshot(q: FairQueue) -> tuple[object, ...]:
    held = {
        m: {p: [(t, list(d)) for t, d in lanes.items()] for p, lanes in levels.items()}
        for m, levels in q.held.items()
    }
    return (+q.waiting, +q.waiting_by, held, sorted(q._granted), dict(q._where))


@given(
    st.lists(
        st.tuples(
            st.sampled_from("abc"),
            st.integers(0, 2),
            st.lists(st.sampled_from("mn"), min_size=1, max_size=4),
        ),
        min_size=1,
        max_size=25,
    ),
    st.lists(
        st.sampled_from(["start-m-a", "start-n-b", "start-m-c", "release-m", "release-n"]),
        max_size=25,
    ),
    st.sampled_from([0, 1]),
)
def test_a_trial_answers_as_admit_would_and_applied_leaves_the_same_queue(
    jobs: list[tuple[str, int, list[str]]], moves: list[str], tenant_depth: int
) -> None:
    """decide asks through a trial (no change to the queue); the runner applies the hold at once
    and each admission once stored: the same as asking `admit` task by task."""
    real = FairQueue(depth=2, tenant_depth=tenant_depth)
    tried = FairQueue(depth=2, tenant_depth=tenant_depth)
    for i, (tenant, priority, models) in enumerate(jobs):
        state = _state(f"j{i}", tenant, priority, models)
        trial = tried.trial()
        before = _snapshot(tried)
        answers = [trial.admit(state, task) for task in state.tasks]
        assert _snapshot(tried) == before  # asking changed nothing
        assert answers == [real.admit(t.model, tenant, priority, state.job_id) for t in state.tasks]
        trial.apply()
        trial.unwind(trial.admitted)  # every task let through was dispatched: nothing to undo
        assert _snapshot(tried) == _snapshot(real)
        if i < len(moves):  # tasks start, held jobs are let through
            kind, model, *tenant = moves[i].split("-")
            for q in (real, tried):
                if kind == "start":
                    q.started(model, tenant[0])
                else:
                    q.release(model)
            assert _snapshot(tried) == _snapshot(real)


def test_a_let_through_whose_dispatch_was_not_stored_is_not_left_counted() -> None:
    q = FairQueue(depth=2)
    state = _state("j", "a", 0, ["m", "m"])
    trial = q.trial()
    assert [trial.admit(state, t) for t in state.tasks] == [True, True]
    trial.apply()
    assert q.waiting["m"] == 2  # counted at once: a decision for another job sees it
    trial.unwind({"t0"})  # t1's append was lost (or it found no node)
    assert q.waiting["m"] == 1


def test_a_tenant_queues_at_most_its_own_depth_beyond_the_free_slots() -> None:
    """The shared queue is first come first served: a tenant's 1,000-task job would keep the
    whole depth of its tasks in front of another tenant's next one. Each tenant gets at most
    `tenant_depth` waiting beyond the free slots; another tenant goes meanwhile."""
    free = {"m": 2.0}
    q = FairQueue(depth=64, room=lambda model: free.get(model, 0.0), tenant_depth=3)
    flood = _state("flood", "acme", 0, ["m"] * 10)
    trial = q.trial()
    assert [trial.admit(flood, t) for t in flood.tasks] == [True] * 5 + [False] * 5  # 2 + 3
    trial.apply()
    assert q.waiting_by[("m", "acme")] == 5 and q.held_by_tenant() == {"acme": 1}
    polite = _state("polite", "globex", 0, ["m"])
    trial = q.trial()
    assert [trial.admit(polite, t) for t in polite.tasks] == [True]  # not behind acme's job
    trial.apply()
    assert q.release("m") == []  # acme has no room of its own yet
    q.started("m", "acme")
    assert q.release("m") == ["flood"]  # one of its tasks started: room for one more
    q.started("m", "globex")
    assert q.waiting_by[("m", "globex")] == 0


def test_repair_bounds_each_tenants_share_by_what_the_workers_report() -> None:
    q = FairQueue(depth=4, tenant_depth=2)
    assert q.admit("m", "a", 0, "j1") and q.admit("m", "b", 0, "j2")
    q.repair("m", 0)  # the workers report nothing waiting: every estimate was high
    assert q.waiting["m"] == 0 and not q.waiting_by
