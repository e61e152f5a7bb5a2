"""What the orchestrator does next for a job: a pure function of its state, the time and the mesh.

`decide` is re-run after every event and on a timer; it looks only at state, so running it
twice, or on two orchestrator instances, proposes the same events, and the optimistic append
lets exactly one of them land. The pattern-specific parts (plan, prompts, result) are in
`services.jobs.patterns`; this module moves tasks through their lives:

planned -> (its `after` tasks final) dispatched to a node or the model's shared subject ->
running -> completed | failed -> (attempts left) dispatched again, avoiding the nodes that failed
it | (none left) the job fails naming the task — unless the pattern tolerates it (partial).
A task sent to a node that is gone is rerouted (an event); a task running on a node whose
heartbeats stopped is failed as `worker_lost` and retried elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from events.envelope import Envelope, Event
from events.jobs import JobFailed, JobPlanned, TaskDispatched, TaskLost
from events.subjects import Names
from projections.job_state import JobState, TaskState, evolve
from services.jobs.attempts import backoff, final
from services.jobs.patterns import models_of, plan
from services.jobs.placement import NodeView, fail, no_node, place, rerouted
from services.jobs.results import describe, finish, tolerated
from services.jobs.templates import TemplateError


@dataclass(slots=True)  # not frozen: built on every decision, and frozen init costs
class _Step:
    """What every step of one decision sees."""

    state: JobState
    now: datetime
    nodes: NodeView
    names: Names
    dispatch_timeout_s: float
    gone: dict[str, bool] = field(default_factory=dict)  # node -> stopped heartbeating (asked once)


def decide(
    state: JobState,
    now: datetime,
    mesh: NodeView,
    names: Names,
    *,
    dispatch_timeout_s: float,
) -> list[Event]:
    """The events that should be appended to the job next (empty when nothing is due)."""
    if state.terminal:
        return []
    step = _Step(state, now, mesh, names, dispatch_timeout_s)
    if not state.planned:
        return _plan(step)
    overdue = _overdue(step)
    if overdue is not None:
        return [overdue]
    out: list[Event | None] = []  # None: a task waits (for room, a node, or its backoff)
    for task in state.tasks:
        move = _MOVES.get(task.status)
        if move is not None:
            out.extend(move(step, task))
    return _outcome(step, out)


def _plan(step: _Step) -> list[Event]:
    """A job's first decision: fail it if a model is served by no node, else plan it and
    dispatch what is ready in the same breath (decided on the state the plan will make)."""
    state, nodes = step.state, step.nodes
    for model in models_of(state):
        if nodes.serves(model):
            continue
        # A model no node has served fails at once (a typo, say); one whose nodes are all
        # away for now (restarting, or their heartbeats held up by a NATS failover) waits
        # for one to come back, as long as a dispatched task would.
        waited = step.now - state.created_at > timedelta(seconds=step.dispatch_timeout_s)
        if nodes.known(model) and not waited:
            return []
        why = no_node(model, nodes)
        if waited:
            why += f" for {step.dispatch_timeout_s:g}s"
        return [JobFailed(job_id=state.job_id, reason=why, code="model_not_served")]
    planned = plan(state)
    # Folded only to decide on (never stored): no id drawn for it.
    after = evolve(state, Envelope(planned, actor="", id="", at=step.now), state.last_seq + 1)
    assert after is not None
    rest = decide(after, step.now, nodes, step.names, dispatch_timeout_s=step.dispatch_timeout_s)
    # Plain first dispatches ride in the plan: one append, one delivery to every reader.
    first = tuple(e for e in rest if type(e) is TaskDispatched)
    if first:
        planned = planned.model_copy(update={"dispatched": first})
    return [planned, *(e for e in rest if type(e) is not TaskDispatched)]


def _overdue(step: _Step) -> JobFailed | None:
    """The job's failure once its deadline has passed."""
    state = step.state
    if state.deadline_s is None:
        return None
    if step.now - state.created_at <= timedelta(seconds=state.deadline_s):
        return None
    reason = f"the job did not finish within its deadline of {state.deadline_s:g}s"
    return fail(state, reason, "timeout")


def _planned(step: _Step, task: TaskState) -> list[Event | None]:
    """A planned task goes once the tasks it waits for are final and admission lets it."""
    state = step.state
    deps = [state.task(t) for t in task.after]
    if not all(d is not None and final(state, d) for d in deps):
        return []
    if not step.nodes.admit(state, task):
        return [None]  # held: the model's queue is full and others go first
    since = max([state.created_at] + [d.finished_at for d in deps if d and d.finished_at])
    return [_place(step, task, 1, since)]


def _dispatched(step: _Step, task: TaskState) -> list[Event | None]:
    """A task sent but not taken: rerouted off a node that went away; failed when no node
    serves its model long after it was sent."""
    state, nodes = step.state, step.nodes
    if task.target and nodes.node_gone(task.target):
        why = f"node {task.target} stopped heartbeating before it took the task"
        prompt = task.prompt if task.template else None
        return [
            rerouted(state, task, task.attempt + 1, step.names, task.target, why, prompt, nodes)
        ]
    if (
        task.dispatched_at is not None
        and step.now - task.dispatched_at > timedelta(seconds=step.dispatch_timeout_s)
        and not nodes.serves(task.model)
    ):
        why = f"{no_node(task.model, nodes)} for {step.dispatch_timeout_s:g}s after dispatch"
        return [fail(state, why, "model_not_served")]
    return []


def _running(step: _Step, task: TaskState) -> list[Event | None]:
    """A running task whose node stopped heartbeating, or was restarted since the task started
    on it (a new instance under the same id: a supervisor's quick restart), is lost
    (`worker_lost`, retried)."""
    node = task.ran_on
    if not node:
        return []
    gone = step.gone.get(node)
    if gone is None:  # once per node and decision (a 1,000-task job runs 96 on 3 nodes)
        gone = step.gone[node] = step.nodes.node_gone(node)
    if gone:
        why = f"node {node} stopped heartbeating while running the task"
    elif task.started_at is not None and step.nodes.node_restarted(node, task.started_at):
        why = f"node {node} restarted while running the task (a new instance took its id)"
    else:
        return []
    return [
        TaskLost(
            job_id=step.state.job_id,
            task_id=task.task_id,
            attempt=task.attempt,
            node_id=node,
            kind="worker_lost",
            error=why,
            retriable=True,
        )
    ]


def _failed(step: _Step, task: TaskState) -> list[Event | None]:
    """A failed task is tried again after its backoff while attempts are left; else the job
    fails naming it, unless its pattern tolerates the loss."""
    state, now = step.state, step.now
    if not final(state, task):
        if task.finished_at is not None and now < task.finished_at + backoff(state, task):
            return [None]  # backing off before the next attempt
        return [_place(step, task, task.attempt + 1, task.finished_at or now)]
    if tolerated(state, task):
        return []
    why = "could not be retried" if not task.retriable else f"failed {task.attempt} times"
    reason = f"{describe(state, task)} {why}; last error ({task.error_kind}): {task.error}"
    # a request the engine refused as it was asked (a schema it cannot honour, a bad token id)
    # is the client's to fix: a 400 at the gateway, not an upstream failure
    refused = task.error_kind == "invalid_request" and not task.retriable
    return [fail(state, reason, "invalid_request" if refused else "task_failed")]


_MOVES: dict[str, Callable[[_Step, TaskState], list[Event | None]]] = {
    "planned": _planned,
    "dispatched": _dispatched,
    "running": _running,
    "failed": _failed,
}


def _place(step: _Step, task: TaskState, attempt: int, since: datetime) -> Event | None:
    try:
        return place(
            step.state,
            task,
            attempt,
            since,
            step.now,
            step.nodes,
            step.names,
            step.dispatch_timeout_s,
        )
    except TemplateError as exc:  # its rendered prompt is over the bound: the job cannot go on
        return fail(step.state, f"task {task.task_id}: {exc}", "prompt_too_large")


def _outcome(step: _Step, out: list[Event | None]) -> list[Event]:
    """The first failure alone (in task order); else what is due; else the job's end once
    every task is final."""
    failed = next((e for e in out if isinstance(e, JobFailed)), None)
    if failed is not None:
        return [failed]  # the first reason, in task order; nothing else is appended
    if any(out):
        return [e for e in out if e is not None]
    if all(final(step.state, t) for t in step.state.tasks):
        return [finish(step.state)]
    return []


def plan_at_door(
    state: JobState, now: datetime, mesh: NodeView, names: Names, *, dispatch_timeout_s: float
) -> JobPlanned | None:
    """The plan of a job not yet submitted (`state`: its `job.submitted` folded) when every one
    of its tasks can go to its model's shared subject now; None when an orchestrator must plan
    it (a task waits for another's output, wants a chosen node, or must wait for room or for a
    node). What a gateway records in the job's `job.submitted`: the decision `decide` would
    make first, taken where the job comes in, so no plan append stands before its first token."""
    events = decide(state, now, mesh, names, dispatch_timeout_s=dispatch_timeout_s)
    if len(events) != 1 or not isinstance(events[0], JobPlanned):
        return None
    planned = events[0]
    if len(planned.dispatched) != len(planned.tasks):
        return None
    if any(d.node_id is not None for d in planned.dispatched):
        return None
    return planned
