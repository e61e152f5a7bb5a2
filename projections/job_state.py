"""The job aggregate: state folded from a job's events by the pure `evolve`.

The orchestrator decides from this state and the job-status projection stores it as the job
view, so both read the log the same way. Timestamps come from the events, never the clock, so a
rebuild from the log produces byte-identical views.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from events.envelope import Envelope, Event
from events.inference import FinishReason, Prompt, SamplingParams, TokenLogprob, Usage, unset
from events.jobs import (
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobPlanned,
    JobSubmitted,
    Part,
    TaskCompleted,
    TaskDeadLettered,
    TaskDispatched,
    TaskFailed,
    TaskLost,
    TaskRerouted,
    TaskRole,
    TaskStarted,
)
from events.patterns import (
    Chained,
    Collaborative,
    Comparative,
    Consensus,
    RetryPolicy,
    Routing,
)
from events.subjects import REPORT_TYPES
from events.tools import ToolCall

JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
TaskStatus = Literal["planned", "dispatched", "running", "completed", "failed"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class _State(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class TaskState(_State):
    """One task of a job."""

    task_id: str
    model: str
    prompt: Prompt | None
    params: SamplingParams
    node_id: str | None = None  # the node the job pins this task to
    role: TaskRole = "main"
    index: int = 0
    name: str | None = None
    after: tuple[str, ...] = ()
    template: str | None = None
    timeout_s: float | None = None
    max_attempts: int | None = None
    tenant: str | None = None
    job_prompt: bool = False  # its prompt is the job's (`prompt` is None then)
    target: str | None = None  # the node the current attempt was sent to (None: shared subject)
    tried: tuple[str, ...] = ()  # nodes where earlier attempts failed
    status: TaskStatus = "planned"
    attempt: int = 0
    subject: str | None = None
    ran_on: str | None = None
    dispatched_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output: str | None = None
    finish_reason: FinishReason | None = None
    usage: Usage = Usage()
    ttft_ms: float | None = None
    error: str | None = None
    error_kind: str | None = None
    retriable: bool = True
    tool_calls: tuple[ToolCall, ...] = Field(default=(), exclude_if=unset)
    logprobs: tuple[TokenLogprob, ...] | None = Field(default=None, exclude_if=unset)
    embeddings: tuple[str, ...] = Field(default=(), exclude_if=unset)


class JobState(_State):
    """Everything known about one job; also its public view."""

    job_id: str
    status: JobStatus = "queued"
    pattern: str
    model: str
    owner: str
    tenant: str
    end_user: str | None = None  # the end user the caller named (OpenAI's `user`)
    key_id: str | None = None  # the API key it came with
    reserved: bool = False  # it holds a token reservation until it ends
    node_id: str | None = None
    max_attempts: int
    prompt: Prompt | None
    params: SamplingParams
    routing: Routing = Routing()
    retry: RetryPolicy = RetryPolicy()
    deadline_s: float | None = None
    priority: int = 0
    collaborative: Collaborative | None = None
    comparative: Comparative | None = None
    chained: Chained | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    tasks: tuple[TaskState, ...] = ()
    output: str | None = None
    finish_reason: FinishReason | None = None
    usage: Usage = Usage()
    ttft_ms: float | None = None
    error: str | None = None
    error_code: str | None = None
    parts: tuple[Part, ...] = ()
    consensus: Consensus | None = None
    errors: tuple[str, ...] = ()
    events: int = 0
    last_seq: int = 0
    # stored without its texts (prompts, outputs, the request's inputs), which made it larger
    # than a view may be: the job's log has them (`job_status.encode_view`)
    trimmed: bool = False
    decided_seq: int = 0  # the sequence of its last decision (any event but a node's report)

    @property
    def terminal(self) -> bool:
        """Whether the job has ended."""
        return self.status in TERMINAL

    @property
    def planned(self) -> bool:
        """Whether the job has been split into tasks."""
        return bool(self.tasks)

    def task(self, task_id: str) -> TaskState | None:
        """The task with `task_id`, if planned."""
        i = self.position(task_id)
        return None if i is None else self.tasks[i]

    def position(self, task_id: str) -> int | None:
        """Where the task with `task_id` is in `tasks` (None: not planned): a plan's n-th task is
        ``<job>-<n>`` (`services.jobs.patterns.task_id`), looked up at once; any other id is
        searched for (a 1,000-task job's every event looked its task up)."""
        tasks = self.tasks
        number = task_id.rpartition("-")[2]
        if number.isdigit():
            i = int(number)
            if i < len(tasks) and tasks[i].task_id == task_id:
                return i
        return next((n for n, t in enumerate(tasks) if t.task_id == task_id), None)


def _with_task(state: JobState, task_id: str, **changes: object) -> JobState:
    i = state.position(task_id)
    if i is None:
        return state
    tasks = state.tasks
    changed = tasks[i].model_copy(update=changes)
    return state.model_copy(update={"tasks": (*tasks[:i], changed, *tasks[i + 1 :])})


def _dispatched(task: TaskState, event: TaskDispatched | None, at: datetime) -> TaskState:
    """The task once `event` sent its attempt to a subject (unchanged for no event)."""
    if event is None:
        return task
    return task.model_copy(
        update={
            "status": "dispatched",
            "attempt": event.attempt,
            "subject": event.subject,
            "target": event.node_id,
            "prompt": event.prompt or task.prompt,
            "dispatched_at": at,
            "started_at": None,
            "finished_at": None,
            "error": None,
            "error_kind": None,
        }
    )


def _open_attempt(state: JobState, task_id: str, attempt: int) -> bool:
    """Whether `attempt` is the task's current attempt and has no result yet."""
    task = state.task(task_id)
    return (
        task is not None and task.attempt == attempt and task.status not in ("completed", "failed")
    )


def _guessed_lost(state: JobState, task_id: str, attempt: int) -> bool:
    """Whether `attempt` is the task's current attempt and failed only by the orchestrator's
    verdict that its node was lost (no newer attempt yet): the node's own result beats the guess
    whichever of the two was stored first (a verdict may be decided before the result is seen)."""
    task = state.task(task_id)
    return (
        task is not None
        and task.attempt == attempt
        and task.status == "failed"
        and task.error_kind == "worker_lost"
        and bool(task.tried)
    )


Believe = Callable[[Event], bool]  # whether an event is believed (services/registry/trust.py)


def evolve(
    state: JobState | None,
    envelope: Envelope,
    seq: int,
    believe: Believe | None = None,
    *,
    at_seq: int | None = None,
) -> JobState | None:
    """Fold one event (stored at stream sequence `seq`) into the job's state.

    Events at or below `last_seq` were already applied and are ignored (JetStream delivers at
    least once). Events that do not fit the state (a result for an attempt that is no longer
    current, anything after the end) leave it as it was, apart from the tracking fields; so do
    events `believe` says no to (a node's report its enrolled key did not sign). `at_seq`:
    the position to record instead of `seq` (an orchestrator folding its own append ahead of
    the reports stored before it, which it has yet to fold).
    """
    event = envelope.data
    if state is None:
        if not isinstance(event, JobSubmitted):
            return None
        submitted = JobState(
            job_id=event.job_id,
            pattern=event.pattern,
            model=event.model,
            owner=event.owner,
            tenant=event.tenant,
            end_user=event.end_user,
            key_id=event.key_id,
            reserved=event.reserved,
            node_id=event.node_id,
            max_attempts=event.max_attempts,
            prompt=event.prompt,
            params=event.params,
            routing=event.routing,
            retry=event.retry,
            deadline_s=event.deadline_s,
            priority=event.priority,
            collaborative=event.collaborative,
            comparative=event.comparative,
            chained=event.chained,
            created_at=envelope.at,
            events=1,
            last_seq=seq,
            decided_seq=seq,
        )
        if event.plan is not None:  # planned where it came in: as if job.planned followed
            return _planned(submitted, event.plan, envelope.at)
        return submitted
    if seq <= state.last_seq:
        return state
    new = state if believe is not None and not believe(event) else _apply(state, envelope)
    decided = state.decided_seq if envelope.type in REPORT_TYPES else max(seq, state.decided_seq)
    position = seq if at_seq is None else at_seq
    return new.model_copy(
        update={"events": state.events + 1, "last_seq": position, "decided_seq": decided}
    )


def _planned(state: JobState, planned: JobPlanned, at: datetime) -> JobState:
    first = {d.task_id: d for d in planned.dispatched}
    tasks = tuple(
        _dispatched(TaskState(**t.__dict__), first.get(t.task_id), at)  # starts as its spec
        for t in planned.tasks
    )
    return state.model_copy(update={"tasks": tasks})


def _apply(state: JobState, envelope: Envelope) -> JobState:
    if state.terminal:
        return state
    event = envelope.data
    change = _CHANGES.get(type(event))
    return state if change is None else change(event, state, envelope.at)


# What each event type changes in the job: one function per type, registered by `_changes`
# (a dict on the exact type: evolve runs for every event in every process).
_CHANGES: dict[type[Event], Callable[[Any, JobState, datetime], JobState]] = {}
_Change = TypeVar("_Change", bound=Callable[..., JobState])


def _changes(*types: type[Event]) -> Callable[[_Change], _Change]:
    def register(fn: _Change) -> _Change:
        for t in types:
            _CHANGES[t] = fn
        return fn

    return register


@_changes(JobPlanned)
def _planned_event(event: JobPlanned, state: JobState, at: datetime) -> JobState:
    return state if state.planned else _planned(state, event, at)


@_changes(TaskDispatched, TaskRerouted)
def _dispatched_event(event: TaskDispatched, state: JobState, at: datetime) -> JobState:
    i = state.position(event.task_id)
    task = None if i is None else state.tasks[i]
    # a completed task is not sent again (a retry decided before its result was seen)
    if i is None or task is None or event.attempt <= task.attempt or task.status == "completed":
        return state
    sent = _dispatched(task, event, at)
    return state.model_copy(update={"tasks": (*state.tasks[:i], sent, *state.tasks[i + 1 :])})


@_changes(TaskStarted)
def _started(event: TaskStarted, state: JobState, at: datetime) -> JobState:
    task = state.task(event.task_id)
    if (
        task is None
        or event.attempt != task.attempt
        or task.status not in ("dispatched", "running")
    ):
        return state
    new = _with_task(state, event.task_id, status="running", ran_on=event.node_id, started_at=at)
    if state.started_at is None:
        new = new.model_copy(update={"status": "running", "started_at": at})
    return new


@_changes(TaskCompleted)
def _completed(event: TaskCompleted, state: JobState, at: datetime) -> JobState:
    task = state.task(event.task_id)
    if task is None or task.status == "completed" or event.attempt > task.attempt:
        return state  # one result per task: the first stored
    undone: dict[str, object] = {}
    if _guessed_lost(state, event.task_id, event.attempt):
        # as if the verdict had come second (and changed nothing)
        undone = {"error": None, "error_kind": None, "retriable": True, "tried": task.tried[:-1]}
    elif event.attempt < task.attempt or task.status == "failed":
        # An earlier attempt's result (its node was thought lost, or its work redelivered to
        # another node that finished it): the work was done, and a gateway may already have
        # answered with it (it takes a job's first `task.completed`). What newer attempts do
        # is not wanted.
        undone = {"error": None, "error_kind": None, "retriable": True}
    return _with_task(
        state,
        event.task_id,
        **undone,
        status="completed",
        ran_on=event.node_id,
        finished_at=at,
        output=event.output,
        finish_reason=event.finish_reason,
        usage=event.usage,
        ttft_ms=event.ttft_ms,
        tool_calls=event.tool_calls,
        logprobs=event.logprobs,
        embeddings=event.embeddings,
    )


@_changes(TaskFailed, TaskLost)
def _failed(event: TaskFailed, state: JobState, at: datetime) -> JobState:
    failed = state.task(event.task_id)
    if failed is None or not _open_attempt(state, event.task_id, event.attempt):
        return state
    return _with_task(
        state,
        event.task_id,
        status="failed",
        finished_at=at,
        tried=failed.tried + ((event.node_id,) if event.node_id else ()),
        error=event.error,
        error_kind=event.kind,
        retriable=event.retriable,
    )


@_changes(TaskDeadLettered)
def _dead_lettered(event: TaskDeadLettered, state: JobState, at: datetime) -> JobState:
    if not _open_attempt(state, event.task_id, event.attempt):
        return state
    return _with_task(
        state,
        event.task_id,
        status="failed",
        finished_at=at,
        error=f"its work message was delivered {event.deliveries} times without a result "
        f"({event.consumer}): {event.error}",
        error_kind="dead_lettered",
        retriable=False,
    )


@_changes(JobCompleted)
def _job_completed(event: JobCompleted, state: JobState, at: datetime) -> JobState:
    ttft = min((t.ttft_ms for t in state.tasks if t.ttft_ms is not None), default=None)
    return state.model_copy(
        update={
            "status": "completed",
            "finished_at": at,
            "output": event.output,
            "finish_reason": event.finish_reason,
            "usage": event.usage,
            "parts": event.parts,
            "consensus": event.consensus,
            "errors": event.errors,
            "ttft_ms": ttft,
        }
    )


@_changes(JobFailed)
def _job_failed(event: JobFailed, state: JobState, at: datetime) -> JobState:
    update = {
        "status": "failed",
        "finished_at": at,
        "error": event.reason,
        "error_code": event.code,
    }
    return state.model_copy(update=update)


@_changes(JobCancelled)
def _job_cancelled(event: JobCancelled, state: JobState, at: datetime) -> JobState:
    update = {"status": "cancelled", "finished_at": at, "error": event.reason}
    return state.model_copy(update=update | {"error_code": "cancelled"})
