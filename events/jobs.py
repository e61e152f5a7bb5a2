"""Job lifecycle events, stored in the JOBS stream on ``NS.jobs.<job_id>.<type>``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from events.envelope import Event, event_type
from events.inference import FinishReason, Prompt, SamplingParams, Usage

Pattern = Literal["single"]
FailureKind = Literal["engine_error", "timeout", "worker_lost", "invalid_request", "no_capacity"]


class TaskSpec(BaseModel):
    """What one task asks of an engine (embedded in events, not an event itself)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    task_id: str
    model: str
    prompt: Prompt
    params: SamplingParams = SamplingParams()
    node_id: str | None = None


@event_type
class JobSubmitted(Event):
    """A client asked for a job; the first event of every job."""

    type = "job.submitted"
    job_id: str
    pattern: Pattern = "single"
    model: str
    prompt: Prompt
    params: SamplingParams = SamplingParams()
    owner: str = "anonymous"
    tenant: str = "default"
    node_id: str | None = None
    max_attempts: int = Field(default=3, ge=1, le=20)


@event_type
class JobPlanned(Event):
    """The orchestrator split the job into tasks."""

    type = "job.planned"
    job_id: str
    tasks: tuple[TaskSpec, ...]


@event_type
class TaskDispatched(Event):
    """A task attempt was put on a work subject."""

    type = "task.dispatched"
    job_id: str
    task_id: str
    attempt: int
    subject: str


@event_type
class TaskStarted(Event):
    """A worker began an attempt of a task."""

    type = "task.started"
    job_id: str
    task_id: str
    attempt: int
    node_id: str
    delivery: int = 1


@event_type
class TaskCompleted(Event):
    """A worker finished an attempt with output and usage."""

    type = "task.completed"
    job_id: str
    task_id: str
    attempt: int
    node_id: str
    output: str
    finish_reason: FinishReason
    usage: Usage
    ttft_ms: float
    duration_ms: float


@event_type
class TaskFailed(Event):
    """An attempt of a task failed; `retriable` says whether another attempt may succeed."""

    type = "task.failed"
    job_id: str
    task_id: str
    attempt: int
    node_id: str | None = None
    kind: FailureKind
    error: str
    retriable: bool = True


class Choice(BaseModel):
    """One of a job's `n` answers."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    index: int
    output: str
    finish_reason: FinishReason


@event_type
class JobCompleted(Event):
    """The job finished with a result."""

    type = "job.completed"
    job_id: str
    output: str
    finish_reason: FinishReason
    usage: Usage
    tenant: str | None = None  # added later: readers of older events see None
    choices: tuple[Choice, ...] = ()  # every answer when n > 1 (output is the first); added later


@event_type
class JobFailed(Event):
    """The job ended without a result; `reason` says why in words a user can act on."""

    type = "job.failed"
    job_id: str
    reason: str
    code: str


@event_type
class JobCancelled(Event):
    """The job was cancelled before it finished."""

    type = "job.cancelled"
    job_id: str
    reason: str = "cancelled by the client"


JobEvent = (
    JobSubmitted
    | JobPlanned
    | TaskDispatched
    | TaskStarted
    | TaskCompleted
    | TaskFailed
    | JobCompleted
    | JobFailed
    | JobCancelled
)
TERMINAL_TYPES = frozenset({JobCompleted.type, JobFailed.type, JobCancelled.type})
