"""What the orchestrator does next for a job: a pure function of its state, the time and the mesh.

`decide` is re-run after every event and on a timer; it looks only at state, so running it
twice, or on two orchestrator instances, proposes the same events, and the optimistic append
lets exactly one of them land.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from events.envelope import Event
from events.inference import Usage
from events.jobs import Choice, JobCompleted, JobFailed, JobPlanned, TaskDispatched, TaskSpec
from events.subjects import Names
from services.orchestrator.state import JobState, TaskState


@dataclass(frozen=True, slots=True)
class Mesh:
    """What the orchestrator knows of the nodes when it decides."""

    serves: Callable[[str], bool]
    node_live: Callable[[str], bool]
    live_models: Callable[[], set[str]]


def task_id(job_id: str, index: int) -> str:
    """The id of a job's `index`-th task."""
    return f"{job_id}-{index}"


def plan(state: JobState) -> JobPlanned:
    """Split a job into tasks. `single`: one task per requested choice (`n`), each with n = 1.

    Choice i samples with seed + i (when a seed is given, else seed i for i > 0), so even a
    deterministic engine gives n different answers, and the same request gives the same n.
    """
    n = state.params.n
    tasks = []
    for i in range(n):
        seed = state.params.seed
        if i:
            seed = (seed or 0) + i
        tasks.append(
            TaskSpec(
                task_id=task_id(state.job_id, i),
                model=state.model,
                prompt=state.prompt,
                params=state.params.model_copy(update={"n": 1, "seed": seed}),
                node_id=state.node_id,
            )
        )
    return JobPlanned(job_id=state.job_id, tasks=tuple(tasks))


def _subject(names: Names, task: TaskState | TaskSpec, mesh: Mesh) -> str:
    if task.node_id and mesh.node_live(task.node_id):
        return names.tasks_for_node(task.node_id)
    return names.tasks_for_model(task.model)


def _no_node(model: str, mesh: Mesh) -> str:
    live = sorted(mesh.live_models())
    serving = ", ".join(live) if live else "none"
    return f"no live node serves model {model!r} (live models: {serving})"


def decide(
    state: JobState,
    now: datetime,
    mesh: Mesh,
    names: Names,
    *,
    dispatch_timeout_s: float,
) -> list[Event]:
    """The events that should be appended to the job next (empty when nothing is due)."""
    if state.terminal:
        return []
    if not state.planned:
        if not mesh.serves(state.model):
            return [
                JobFailed(
                    job_id=state.job_id, reason=_no_node(state.model, mesh), code="model_not_served"
                )
            ]
        planned = plan(state)
        return [planned] + [
            TaskDispatched(
                job_id=state.job_id, task_id=t.task_id, attempt=1, subject=_subject(names, t, mesh)
            )
            for t in planned.tasks
        ]
    out: list[Event] = []
    for task in state.tasks:
        if task.status == "planned":
            # Planned but never dispatched: another writer (a worker's task.started) appended
            # between this job's dispatches, so the rest of the batch was not written.
            out.append(
                TaskDispatched(
                    job_id=state.job_id,
                    task_id=task.task_id,
                    attempt=1,
                    subject=_subject(names, task, mesh),
                )
            )
        elif task.status == "failed":
            if task.retriable and task.attempt < state.max_attempts:
                out.append(
                    TaskDispatched(
                        job_id=state.job_id,
                        task_id=task.task_id,
                        attempt=task.attempt + 1,
                        subject=_subject(names, task, mesh),
                    )
                )
            else:
                why = (
                    "could not be retried" if not task.retriable else f"failed {task.attempt} times"
                )
                return [
                    JobFailed(
                        job_id=state.job_id,
                        reason=f"task {task.task_id} {why}; last error ({task.error_kind}): {task.error}",
                        code="task_failed",
                    )
                ]
        elif (
            task.status == "dispatched"
            and task.dispatched_at is not None
            and now - task.dispatched_at > timedelta(seconds=dispatch_timeout_s)
            and not mesh.serves(task.model)
        ):
            return [
                JobFailed(
                    job_id=state.job_id,
                    reason=f"{_no_node(task.model, mesh)} for {dispatch_timeout_s:g}s after dispatch",
                    code="model_not_served",
                )
            ]
    if out:
        return out
    if state.tasks and all(t.status == "completed" for t in state.tasks):
        return [_complete(state)]
    return []


def _complete(state: JobState) -> JobCompleted:
    task = state.tasks[0]
    # The n choices share one prompt: counted once, as OpenAI does; completions add up.
    usage = Usage(
        prompt_tokens=max(t.usage.prompt_tokens for t in state.tasks),
        completion_tokens=sum(t.usage.completion_tokens for t in state.tasks),
        estimated=any(t.usage.estimated for t in state.tasks),
    )
    choices = tuple(
        Choice(index=i, output=t.output or "", finish_reason=t.finish_reason or "stop")
        for i, t in enumerate(state.tasks)
    )
    return JobCompleted(
        job_id=state.job_id,
        output=task.output or "",
        finish_reason=task.finish_reason or "stop",
        usage=usage,
        tenant=state.tenant,
        choices=choices if len(choices) > 1 else (),
    )
