"""Where a task's attempt goes: what it needs of a node, the node view the decider consults, and
the dispatch (a chosen node, the model's shared subject, or a reroute off a node that is gone)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from events.capabilities import BASIC, needed
from events.envelope import Event
from events.inference import Prompt
from events.jobs import JobFailed, TaskDispatched, TaskRerouted
from events.subjects import Names
from projections.job_state import JobState, TaskState
from services.jobs.patterns import prompt_for
from services.jobs.results import describe
from services.jobs.templates import TemplateError
from services.registry.live import LiveNodes
from services.registry.select import SHARED, Need

AFFINITY_PREFIX = 256  # characters of the prompt that key prefix affinity
BASIC_NEED = frozenset(BASIC)  # what every node does: no need to choose one for it


@dataclass(frozen=True, slots=True)
class NodeView:
    """What the decider knows of the nodes: the live view's answers, and the caller's admission
    (fair queue) and node choice."""

    serves: Callable[[str], bool]
    node_live: Callable[[str], bool]
    live_models: Callable[[], set[str]]
    node_gone: Callable[[str], bool] = lambda _: False  # heartbeats stopped (or record gone)
    # the node's record is of an instance started after the given time (a restarted worker)
    node_restarted: Callable[[str, datetime], bool] = lambda _n, _t: False
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
        node_restarted=nodes.restarted,
        known=nodes.known,
        admit=admit,
        pick=pick,
    )


def no_node(model: str, mesh: NodeView) -> str:
    live = sorted(mesh.live_models())
    serving = ", ".join(live) if live else "none"
    return f"no live node serves model {model!r} (live models: {serving})"


def need_of(state: JobState, task: TaskState, prompt: Prompt | None = None) -> Need:
    """What the task asks of a node (`prompt`: the one it will run, if not its own)."""
    routing = state.routing
    key = routing.affinity_key
    prompt = prompt or task.prompt or (state.prompt if task.job_prompt else None)
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
        can=needed(prompt, task.params) if prompt is not None else frozenset(),
    )


def dispatch(
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
        why = f"node {pinned} is not live"
        return rerouted(state, task, attempt, names, pinned, why, rendered, mesh)
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


def rerouted(
    state: JobState,
    task: TaskState,
    attempt: int,
    names: Names,
    from_node: str,
    reason: str,
    prompt: Prompt | None,
    mesh: NodeView | None = None,
) -> TaskRerouted:
    """`attempt` sent elsewhere than `from_node` (`prompt`: the rendered prompt of a templated
    task): to the model's shared subject, or — when not every node there can do what the task
    asks (`mesh` says) — to a node that can."""
    node = None
    if mesh is not None:
        need = need_of(state, task, prompt or prompt_for(state, task))
        if need.can - BASIC_NEED:
            node = mesh.pick(replace(need, exclude=need.exclude | {from_node}, spread=True))
    return TaskRerouted(
        job_id=state.job_id,
        task_id=task.task_id,
        attempt=attempt,
        subject=names.tasks_for_node(node) if node else names.tasks_for_model(task.model),
        node_id=node or None,
        prompt=prompt,
        from_node=from_node,
        reason=reason,
    )


def place(
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
        event = dispatch(state, task, attempt, mesh, names)
    except TemplateError as exc:
        return fail(state, f"{describe(state, task)}: {exc}", "invalid_template")
    if event is not None or now - since <= timedelta(seconds=dispatch_timeout_s):
        return event
    if not mesh.serves(task.model):
        return fail(
            state, f"{no_node(task.model, mesh)} for {describe(state, task)}", "model_not_served"
        )
    return fail(
        state,
        f"no live node serving {task.model!r} meets the job's requirements (tenant, context "
        f"length, GPU memory) for {dispatch_timeout_s:g}s; {describe(state, task)} waits in vain",
        "no_capacity",
    )


def fail(state: JobState, reason: str, code: str) -> JobFailed:
    return JobFailed(job_id=state.job_id, reason=reason, code=code)
