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

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from events.envelope import Envelope, Event
from events.inference import Prompt
from events.jobs import JobFailed, JobPlanned, TaskDispatched, TaskFailed, TaskRerouted
from events.subjects import Names
from projections.job_state import JobState, TaskState, evolve
from services.jobs.patterns import describe, finish, models_of, plan, prompt_for, tolerated
from services.jobs.templates import TemplateError
from services.registry.live import LiveNodes
from services.registry.select import SHARED, Need

AFFINITY_PREFIX = 256  # characters of the prompt that key prefix affinity


@dataclass(frozen=True, slots=True)
class NodeView:
    """What the decider knows of the nodes: the live view's answers, and the caller's admission
    (fair queue) and node choice."""

    serves: Callable[[str], bool]
    node_live: Callable[[str], bool]
    live_models: Callable[[], set[str]]
    node_gone: Callable[[str], bool] = lambda _: False  # heartbeats stopped (or record gone)
    known: Callable[[str], bool] = lambda _: False  # some node, live or not, has served it
    admit: Callable[[JobState, TaskState], bool] = lambda _s, _t: True  # fair queue: go now?
    pick: Callable[[Need], str | None] = lambda _: SHARED  # node id, SHARED, None: none eligible


def view_of(
    nodes: LiveNodes,
    *,
    admit: Callable[[JobState, TaskState], bool],
    pick: Callable[[Need], str | None],
) -> NodeView:
    """The live nodes as `decide` consults them, with the caller's admission and node choice."""
    pool = nodes.pool
    return NodeView(
        serves=lambda model: bool(nodes.serving(model)),
        node_live=lambda node: node in pool.records,
        live_models=nodes.live_models,
        node_gone=nodes.gone,
        known=nodes.known,
        admit=admit,
        pick=pick,
    )


def _no_node(model: str, mesh: NodeView) -> str:
    live = sorted(mesh.live_models())
    serving = ", ".join(live) if live else "none"
    return f"no live node serves model {model!r} (live models: {serving})"


def max_attempts(state: JobState, task: TaskState) -> int:
    """Attempts the task may make."""
    return task.max_attempts or state.max_attempts


def final(state: JobState, task: TaskState) -> bool:
    """Whether the task will change no more: completed, or failed with no attempt left."""
    if task.status == "completed":
        return True
    return task.status == "failed" and not (
        task.retriable and task.attempt < max_attempts(state, task)
    )


def backoff(state: JobState, task: TaskState) -> timedelta:
    """How long the task waits after its failed attempt: doubling per attempt, capped, less a
    jitter share drawn from (job, task, attempt) — so it is the same on every decision."""
    policy = state.retry
    base = min(policy.max_backoff_s, policy.backoff_s * 2 ** max(0, task.attempt - 1))
    digest = hashlib.blake2b(
        f"{state.job_id}/{task.task_id}/{task.attempt}".encode(), digest_size=4
    )
    share = int.from_bytes(digest.digest(), "big") / 2**32
    return timedelta(seconds=base * (1 - policy.jitter * share))


def need_of(state: JobState, task: TaskState, prompt: Prompt | None = None) -> Need:
    """What the task asks of a node (`prompt`: the one it will run, if not its own)."""
    routing = state.routing
    key = routing.affinity_key
    prompt = prompt or task.prompt
    if key is None and routing.strategy == "affinity" and prompt is not None:
        key = prompt.render()[:AFFINITY_PREFIX]
    return Need(
        model=task.model,
        tenant=state.tenant,
        strategy=routing.strategy,
        key=key,
        min_context=routing.min_context,
        min_gpu_memory_mib=routing.min_gpu_memory_mib,
        exclude=frozenset(task.tried),
        spread=task.role == "shard",
    )


def _dispatch(
    state: JobState, task: TaskState, attempt: int, mesh: NodeView, names: Names
) -> Event | None:
    """The dispatch of `attempt`, or None while no eligible node is live (it waits)."""
    prompt = prompt_for(state, task)
    rendered = prompt if task.template is not None else None  # recorded: it is not in the plan
    pinned = task.node_id
    if pinned:
        if mesh.node_live(pinned):
            return TaskDispatched(
                job_id=state.job_id,
                task_id=task.task_id,
                attempt=attempt,
                subject=names.tasks_for_node(pinned),
                node_id=pinned,
                prompt=rendered,
            )
        return _rerouted(
            state, task, attempt, names, pinned, f"node {pinned} is not live", rendered
        )
    node = mesh.pick(need_of(state, task, prompt))
    if node is None:
        return None
    return TaskDispatched(
        job_id=state.job_id,
        task_id=task.task_id,
        attempt=attempt,
        subject=names.tasks_for_node(node) if node else names.tasks_for_model(task.model),
        node_id=node or None,
        prompt=rendered,
    )


def _rerouted(
    state: JobState,
    task: TaskState,
    attempt: int,
    names: Names,
    from_node: str,
    reason: str,
    prompt: Prompt | None,
) -> TaskRerouted:
    """`attempt` sent to the model's shared subject instead of `from_node` (`prompt`: the
    rendered prompt of a templated task)."""
    return TaskRerouted(
        job_id=state.job_id,
        task_id=task.task_id,
        attempt=attempt,
        subject=names.tasks_for_model(task.model),
        prompt=prompt,
        from_node=from_node,
        reason=reason,
    )


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
    if not state.planned:
        for model in models_of(state):
            if mesh.serves(model):
                continue
            # A model no node has served fails at once (a typo, say); one whose nodes are all
            # away for now (restarting, or their heartbeats held up by a NATS failover) waits
            # for one to come back, as long as a dispatched task would.
            waited = now - state.created_at > timedelta(seconds=dispatch_timeout_s)
            if mesh.known(model) and not waited:
                return []
            why = _no_node(model, mesh)
            if waited:
                why += f" for {dispatch_timeout_s:g}s"
            return [JobFailed(job_id=state.job_id, reason=why, code="model_not_served")]
        planned = plan(state)
        # Dispatch what is ready in the same breath, decided on the state the plan will make.
        # Folded only to decide on (never stored): no id drawn for it.
        after = evolve(state, Envelope(planned, actor="", id="", at=now), state.last_seq + 1)
        assert after is not None
        rest = decide(after, now, mesh, names, dispatch_timeout_s=dispatch_timeout_s)
        # Plain first dispatches ride in the plan: one append, one delivery to every reader.
        first = tuple(e for e in rest if type(e) is TaskDispatched)
        if first:
            planned = planned.model_copy(update={"dispatched": first})
        return [planned, *(e for e in rest if type(e) is not TaskDispatched)]
    if state.deadline_s is not None and now - state.created_at > timedelta(
        seconds=state.deadline_s
    ):
        return [
            _fail(
                state,
                f"the job did not finish within its deadline of {state.deadline_s:g}s",
                "timeout",
            )
        ]
    out: list[Event | None] = []  # None: a task waits for an eligible node
    for task in state.tasks:
        if task.status == "planned":
            deps = [state.task(t) for t in task.after]
            if not all(d is not None and final(state, d) for d in deps):
                continue
            if not mesh.admit(state, task):
                out.append(None)  # held: the model's queue is full and others go first
                continue
            since = max([state.created_at] + [d.finished_at for d in deps if d and d.finished_at])
            out.append(_place(state, task, 1, since, now, mesh, names, dispatch_timeout_s))
        elif task.status == "dispatched":
            if task.target and mesh.node_gone(task.target):
                out.append(
                    _rerouted(
                        state,
                        task,
                        task.attempt + 1,
                        names,
                        task.target,
                        f"node {task.target} stopped heartbeating before it took the task",
                        task.prompt if task.template else None,
                    )
                )
            elif (
                task.dispatched_at is not None
                and now - task.dispatched_at > timedelta(seconds=dispatch_timeout_s)
                and not mesh.serves(task.model)
            ):
                out.append(
                    _fail(
                        state,
                        f"{_no_node(task.model, mesh)} for {dispatch_timeout_s:g}s after dispatch",
                        "model_not_served",
                    )
                )
        elif task.status == "running":
            if task.ran_on and mesh.node_gone(task.ran_on):
                out.append(
                    TaskFailed(
                        job_id=state.job_id,
                        task_id=task.task_id,
                        attempt=task.attempt,
                        node_id=task.ran_on,
                        kind="worker_lost",
                        error=f"node {task.ran_on} stopped heartbeating while running the task",
                        retriable=True,
                    )
                )
        elif task.status == "failed":
            if not final(state, task):
                if task.finished_at is not None and now < task.finished_at + backoff(state, task):
                    out.append(None)  # backing off before the next attempt
                    continue
                since = task.finished_at or now
                out.append(
                    _place(
                        state, task, task.attempt + 1, since, now, mesh, names, dispatch_timeout_s
                    )
                )
            elif not tolerated(state, task):
                why = (
                    "could not be retried" if not task.retriable else f"failed {task.attempt} times"
                )
                out.append(
                    _fail(
                        state,
                        f"{describe(state, task)} {why}; last error ({task.error_kind}): {task.error}",
                        "task_failed",
                    )
                )
    failed = next((e for e in out if isinstance(e, JobFailed)), None)
    if failed is not None:
        return [failed]  # the first reason, in task order; nothing else is appended
    if any(out):
        return [e for e in out if e is not None]
    if all(final(state, t) for t in state.tasks):
        return [finish(state)]
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


def _place(
    state: JobState,
    task: TaskState,
    attempt: int,
    since: datetime,
    now: datetime,
    mesh: NodeView,
    names: Names,
    dispatch_timeout_s: float,
) -> Event | None:
    """Dispatch `attempt`; None to wait for an eligible node; a failure after waiting too long."""
    try:
        event = _dispatch(state, task, attempt, mesh, names)
    except TemplateError as exc:
        return _fail(state, f"{describe(state, task)}: {exc}", "invalid_template")
    if event is not None or now - since <= timedelta(seconds=dispatch_timeout_s):
        return event
    if not mesh.serves(task.model):
        return _fail(
            state, f"{_no_node(task.model, mesh)} for {describe(state, task)}", "model_not_served"
        )
    return _fail(
        state,
        f"no live node serving {task.model!r} meets the job's requirements (tenant, context "
        f"length, GPU memory) for {dispatch_timeout_s:g}s; {describe(state, task)} waits in vain",
        "no_capacity",
    )


def _fail(state: JobState, reason: str, code: str) -> JobFailed:
    return JobFailed(job_id=state.job_id, reason=reason, code=code)
