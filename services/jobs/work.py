"""The work a recorded dispatch puts on a tasks subject: which dispatches an event holds, and the
message each one sends. Pure; the orchestrator and the gateway (for plans made at the door) send
with it, under ids derived from the event's, so JetStream keeps one copy whoever sends first."""

from __future__ import annotations

from events.envelope import Envelope
from events.jobs import JobPlanned, JobSubmitted, TaskDispatched, TaskSpec
from events.work import TaskRequested
from projections.job_state import JobState

_SPEC_FIELDS = tuple(
    f for f in TaskSpec.model_fields if f not in ("node_id", "tenant", "after", "template")
)


def dispatches_in(envelope: Envelope) -> list[tuple[TaskDispatched, str]]:
    """The dispatches an event records, each with the id its work message is sent under
    (derived from the event's, so a re-send — by a restarted or a second instance — is dropped
    by JetStream): a dispatch, a plan's first dispatches, or those of a plan made at the door."""
    event = envelope.data
    if isinstance(event, TaskDispatched):
        return [(event, envelope.id)]
    plan = event.plan if isinstance(event, JobSubmitted) else event
    if isinstance(plan, JobPlanned):
        return [(d, f"{envelope.id}-{d.task_id}") for d in plan.dispatched]
    return []


def task_request(state: JobState, dispatch: TaskDispatched) -> TaskRequested | None:
    """The work message for `dispatch`, or None when it is no longer due (the task moved on to
    another attempt, or already runs)."""
    task = state.task(dispatch.task_id)
    if task is None or task.attempt != dispatch.attempt or task.status != "dispatched":
        return None
    fields = {f: getattr(task, f) for f in _SPEC_FIELDS}
    if task.job_prompt and task.prompt is None:  # the worker gets the prompt itself
        fields |= {"prompt": state.prompt, "job_prompt": False}
    return TaskRequested(
        job_id=state.job_id,
        attempt=dispatch.attempt,
        task=TaskSpec(**fields, node_id=dispatch.node_id, tenant=state.tenant),
    )
