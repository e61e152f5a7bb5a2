"""Planning at the door: which jobs a gateway plans itself, and how the plan folds. No server:
the gateway's node and queue views are in-memory mirrors, filled here as their KV watches would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from events.envelope import Envelope
from events.inference import Prompt, SamplingParams
from events.jobs import JobPlanned, JobSubmitted
from events.patterns import Candidate, Chained, Comparative, Routing, Step
from events.records import NodeRecord, TenantQueue
from events.subjects import Names
from events.watched import WatchedBucket
from gateway.preplan import MAX_PROMPT_CHARS, Preplanner
from projections.job_state import evolve
from services.jobs.decide import decide, plan_at_door
from services.jobs.placement import NodeView
from services.registry.live import LiveNodes
from services.registry.select import SHARED

NAMES = Names("t")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SERVING = NodeView(  # as the node pool picks: a node only when the task's needs say choose one
    serves=lambda m: m in ("m", "n"),
    node_live=lambda n: n == "gpu-1",
    live_models=lambda: {"m", "n"},
    pick=lambda need: "gpu-1" if need.targeted else SHARED,
)


def _job(**fields: object) -> JobSubmitted:
    fields.setdefault("prompt", Prompt(text="hi"))
    fields.setdefault("job_id", "J")
    return JobSubmitted(model="m", **fields)  # type: ignore[arg-type]


def _door(job: JobSubmitted, mesh: NodeView = SERVING) -> JobPlanned | None:
    state = evolve(None, Envelope(job, actor="t", at=T0), 1)
    assert state is not None
    return plan_at_door(state, T0, mesh, NAMES, dispatch_timeout_s=5)


def test_a_plain_job_is_planned_with_every_task_on_its_models_shared_subject() -> None:
    planned = _door(_job(params=SamplingParams(n=2)))
    assert planned is not None
    assert [d.task_id for d in planned.dispatched] == [t.task_id for t in planned.tasks]
    assert {d.subject for d in planned.dispatched} == {NAMES.tasks_for_model("m")}
    assert all(d.node_id is None for d in planned.dispatched)
    # ... and it is exactly what an orchestrator would decide first
    state = evolve(None, Envelope(_job(params=SamplingParams(n=2)), actor="t", at=T0), 1)
    assert state is not None
    first = decide(state, T0, SERVING, NAMES, dispatch_timeout_s=5)
    assert first == [planned]


def test_comparative_candidates_all_start_at_once_so_it_is_planned_too() -> None:
    job = _job(
        pattern="comparative",
        comparative=Comparative(candidates=(Candidate(model="m"), Candidate(model="n"))),
    )
    planned = _door(job)
    assert planned is not None and len(planned.dispatched) == 2


@pytest.mark.parametrize(
    ("why", "job", "mesh"),
    [
        ("pinned to a node", _job(node_id="gpu-1"), SERVING),
        (
            "a routing strategy chooses a node",
            _job(routing=Routing(strategy="round_robin")),
            SERVING,
        ),
        (
            "its second step waits for the first",
            _job(
                pattern="chained",
                prompt=Prompt(text="x"),
                chained=Chained(
                    steps=(
                        Step(name="a", prompt="{{ input }}"),
                        Step(name="b", prompt="{{ steps.a }}"),
                    )
                ),
            ),
            SERVING,
        ),
        (
            "no room for it now",
            _job(),
            NodeView(
                serves=lambda m: True,
                node_live=lambda n: True,
                live_models=lambda: {"m"},
                admit=lambda _s, _t: False,
            ),
        ),
        (
            "no live node serves the model",
            _job(),
            NodeView(serves=lambda m: False, node_live=lambda n: False, live_models=set),
        ),
    ],
)
def test_anything_else_is_left_to_an_orchestrator(
    why: str, job: JobSubmitted, mesh: NodeView
) -> None:
    assert _door(job, mesh) is None, why


def test_a_plan_recorded_in_job_submitted_folds_as_if_job_planned_had_followed() -> None:
    planned = _door(_job())
    assert planned is not None
    at = T0 + timedelta(milliseconds=3)
    with_plan = evolve(None, Envelope(_job(plan=planned), actor="t", at=at), 7)
    plain = evolve(None, Envelope(_job(), actor="t", at=at), 7)
    then = evolve(plain, Envelope(planned, actor="t", at=at), 8)
    assert with_plan is not None and then is not None
    assert with_plan.tasks == then.tasks
    assert [t.status for t in with_plan.tasks] == ["dispatched"]
    assert with_plan.last_seq == 7 and with_plan.events == 1
    # a later job.planned (a second instance that planned anyway) changes nothing
    again = evolve(with_plan, Envelope(planned, actor="t", at=at), 8)
    assert again is not None and again.tasks == with_plan.tasks


# --- the gateway's side: room ----------------------------------------------------------------


def _record(node_id: str, capacity: int, in_flight: int = 0, queued: int = 0) -> NodeRecord:
    now = datetime.now(UTC)
    return NodeRecord(
        node_id=node_id,
        models=("m",),
        engine="simulated",
        capacity=capacity,
        in_flight=in_flight,
        version="test",
        started_at=now,
        heartbeat_at=now,
        queued={"m": queued},
    )


def _gateway(*records: NodeRecord, held: int = 0) -> Preplanner:
    bus = SimpleNamespace(names=NAMES)  # the views are filled by hand below, not by a watch
    nodes = LiveNodes(bus, ttl_s=30.0)  # type: ignore[arg-type]
    for r in records:
        nodes.items[r.node_id] = r
        nodes.changed(r.node_id, r)
    queues: WatchedBucket[TenantQueue] = WatchedBucket(bus, "queues", TenantQueue)  # type: ignore[arg-type]
    if held:
        queues.items["other"] = TenantQueue(tenant="other", held=held)
    return Preplanner(nodes, queues, NAMES, heartbeat_s=60.0, dispatch_timeout_s=5)


def test_the_gateway_plans_only_as_many_jobs_as_there_are_free_slots() -> None:
    door = _gateway(_record("a", capacity=2, in_flight=1), _record("b", capacity=2, in_flight=0))
    results = [door.plan(_job(job_id=f"J{i}")).plan is not None for i in range(5)]
    assert results == [
        True,
        True,
        True,
        False,
        False,
    ]  # 3 free slots; sends counted until heartbeats
    assert door.planned == 3


def test_tasks_already_waiting_for_the_model_take_the_free_slots_first() -> None:
    door = _gateway(_record("a", capacity=4, in_flight=1, queued=3))
    assert door.plan(_job()).plan is None


def test_while_any_job_is_held_for_capacity_the_fair_queue_decides() -> None:
    door = _gateway(_record("a", capacity=8), held=1)
    assert door.plan(_job()).plan is None


def test_a_job_whose_tasks_need_more_slots_than_are_free_is_left_whole() -> None:
    door = _gateway(_record("a", capacity=2))
    assert door.plan(_job(params=SamplingParams(n=3))).plan is None
    assert door.plan(_job(params=SamplingParams(n=2))).plan is not None


def test_a_long_prompt_is_planned_by_an_orchestrator() -> None:
    door = _gateway(_record("a", capacity=8))
    assert door.plan(_job(prompt=Prompt(text="x" * (MAX_PROMPT_CHARS + 1)))).plan is None
    assert door.plan(_job(prompt=Prompt(text="x" * 100))).plan is not None


def test_a_slot_is_free_again_when_its_task_finishes_or_the_next_heartbeat_tells() -> None:
    door = _gateway(_record("a", capacity=1))
    assert door.plan(_job(job_id="J1")).plan is not None
    assert door.plan(_job(job_id="J2")).plan is None  # the only slot is taken
    door.ended("J1", "task.completed")
    assert door.plan(_job(job_id="J3")).plan is not None
    door.ledger.window_s = 0.0  # past the next heartbeat: the records count what still runs
    assert door.plan(_job(job_id="J4")).plan is not None


def test_a_job_of_several_tasks_frees_a_slot_per_task_and_the_rest_when_it_ends() -> None:
    door = _gateway(_record("a", capacity=3))
    assert door.plan(_job(job_id="J1", params=SamplingParams(n=3))).plan is not None
    assert door.room("m") == 0
    door.ended("J1", "task.completed")  # one of its three tasks
    assert door.room("m") == 1
    door.ended("J1", "task.completed")
    assert door.room("m") == 2
    door.ended("J1", "job.failed")  # the last one will not come: the job ended
    assert door.room("m") == 3
    door.ended("J1", "job.failed")  # told twice (a redelivery): nothing more to free
    door.ended("J1", "task.completed")  # a late result of an attempt given up
    assert door.room("m") == 3
