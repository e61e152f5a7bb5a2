"""An orchestrator's verdicts against a log that moved on: a `task.lost` or `job.failed` decided
on a state that had not seen a node's result is refused, and decided again on that result."""

from __future__ import annotations

from events.bus import Bus
from events.envelope import Envelope
from events.ids import new_id
from events.inference import Prompt, Usage
from events.job_log import append_submitted, history
from events.jobs import JobSubmitted, TaskCompleted, TaskStarted
from projections.job_state import evolve
from services.jobs.decide import plan_at_door
from services.jobs.placement import NodeView
from services.orchestrator.runner import Orchestrator
from services.settings import Settings


async def test_a_lost_verdict_decided_before_the_nodes_result_was_seen_is_not_stored(
    bus: Bus, settings: Settings
) -> None:
    # Seen in a compose smoke test: task.completed stored at 333, then this instance, which had
    # folded up to 332 (running) and thought the node gone, stored task.lost at 334 and failed
    # the job at 335. Its view here holds no node at all: every node is gone to it.
    job = JobSubmitted(job_id=new_id(), model="m", prompt=Prompt(text="x"), max_attempts=1)
    state = evolve(None, Envelope(job, actor="test"), 0)
    assert state is not None
    anything = NodeView(serves=lambda _: True, node_live=lambda _: True, live_models=set)
    plan = plan_at_door(state, state.created_at, anything, bus.names, dispatch_timeout_s=5)
    assert plan is not None
    (task,) = plan.tasks
    envelope, seq = await append_submitted(bus, job.model_copy(update={"plan": plan}))
    state = evolve(None, envelope, seq)
    started = Envelope(
        TaskStarted(job_id=job.job_id, task_id=task.task_id, attempt=1, node_id="w1"), actor="w"
    )
    ack = await bus.publish(bus.names.report(job.job_id, started.type, "w1"), started)
    state = evolve(state, started, ack.seq)
    assert state is not None and state.tasks[0].status == "running"
    completed = TaskCompleted(
        job_id=job.job_id,
        task_id=task.task_id,
        attempt=1,
        node_id="w1",
        output="done",
        finish_reason="stop",
        usage=Usage(prompt_tokens=1, completion_tokens=1),
        ttft_ms=1.0,
        duration_ms=2.0,
    )
    await bus.publish(
        bus.names.report(job.job_id, completed.type, "w1"), Envelope(completed, actor="w")
    )

    orchestrator = Orchestrator(bus, settings)  # not started: its node view is empty
    assert orchestrator.view.node_gone("w1")
    await orchestrator._advance(state)  # decided on the state before the result

    types = [e.type for _, e in await history(bus, job.job_id)]
    assert types == ["job.submitted", "task.started", "task.completed"]
    assert orchestrator.lost_races == 1
