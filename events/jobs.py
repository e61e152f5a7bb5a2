"""Job lifecycle events, stored in the JOBS stream on ``NS.jobs.<job_id>.<type>``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from events.envelope import Event, event_type
from events.inference import FinishReason, Prompt, SamplingParams, TokenLogprob, Usage, unset
from events.patterns import (
    Chained,
    Collaborative,
    Comparative,
    Consensus,
    Pattern,
    RetryPolicy,
    Routing,
)
from events.tools import ToolCall

TaskRole = Literal["main", "shard", "reduce", "candidate", "judge", "step"]
FailureKind = Literal["engine_error", "timeout", "worker_lost", "invalid_request", "no_capacity"]


class TaskSpec(BaseModel):
    """What one task asks of an engine (embedded in events, not an event itself)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    task_id: str
    model: str
    prompt: Prompt | None = None  # None until rendered from `template` (waits for `after`)
    params: SamplingParams = SamplingParams()
    node_id: str | None = None
    # added with the patterns; older events read as a single job's task
    role: TaskRole = "main"
    index: int = 0  # position among the tasks of its role (input, candidate, step order)
    name: str | None = None  # a chain step's name
    after: tuple[str, ...] = ()  # task ids whose outputs this task's prompt needs
    template: str | None = None  # prompt template, rendered when `after` have completed
    timeout_s: float | None = None
    max_attempts: int | None = None  # None: the job's
    tenant: str | None = None  # the job's tenant, for nodes that serve only some tenants
    # added later: the prompt is the job's own (kept once, in the job, not in every task: 16
    # choices of a large prompt made plans and views of 16 copies); a work message carries it
    job_prompt: bool = False


@event_type
class JobSubmitted(Event):
    """A client asked for a job; the first event of every job."""

    type = "job.submitted"
    job_id: str
    pattern: Pattern = "single"
    model: str
    prompt: Prompt | None = None  # every pattern but collaborative (its inputs are the prompts)
    params: SamplingParams = SamplingParams()
    owner: str = "anonymous"
    tenant: str = "default"
    node_id: str | None = None
    max_attempts: int = Field(default=3, ge=1, le=20)
    # added with the patterns (issue 4); absent in older events
    routing: Routing = Routing()
    retry: RetryPolicy = RetryPolicy()
    deadline_s: float | None = None  # the whole job must end within this, or it fails
    priority: int = Field(default=0, ge=0, le=9)  # 9 first, when a model's queue is full
    collaborative: Collaborative | None = None
    comparative: Comparative | None = None
    chained: Chained | None = None
    # The plan, decided where the job came in (a gateway) when all of its tasks could go to
    # their models' shared subjects at once: orchestrators fold it as if `job.planned` had
    # followed and send its work, so no plan append stands between a job and its first token.
    # None: an orchestrator plans the job.
    plan: JobPlanned | None = None
    # the end user the caller named (OpenAI's `user`), kept for audit and usage
    end_user: str | None = None
    # added with per-key usage (issue "Usage you can read"); absent in older events:
    key_id: str | None = None  # the API key the job came with (None: a session, the CLI)
    # the gateway holds a token reservation for it (a tenant quota or the key's budget),
    # which the projector removes when it folds the job's end
    reserved: bool = False


@event_type
class TaskDispatched(Event):
    """A task attempt was put on a work subject."""

    type = "task.dispatched"
    job_id: str
    task_id: str
    attempt: int
    subject: str
    node_id: str | None = None  # the node targeted (None: the model's shared subject)
    prompt: Prompt | None = None  # the prompt rendered for this task (templated tasks)


@event_type
class TaskRerouted(TaskDispatched):
    """A task meant for one node went to its model's shared subject instead: the node is gone."""

    type = "task.rerouted"
    from_node: str
    reason: str


@event_type
class JobPlanned(Event):
    """The orchestrator split the job into tasks."""

    type = "job.planned"
    job_id: str
    tasks: tuple[TaskSpec, ...]
    # the first dispatches, recorded with the plan (one append instead of one per task); each is
    # a `task.dispatched` in all but name. Added later: older plans were followed by separate
    # task.dispatched events.
    dispatched: tuple[TaskDispatched, ...] = ()


JobSubmitted.model_rebuild()  # `plan` names a class defined after it


@event_type
class TaskStarted(Event):
    """A worker began an attempt of a task."""

    type = "task.started"
    job_id: str
    task_id: str
    attempt: int
    node_id: str
    delivery: int = 1
    # an attempt that continues an answer a dead worker began: what it found already produced
    resumed_chars: int = 0
    resumed_tokens: int = 0
    # added with signed reports: the node's Ed25519 signature (events/signing.py), "" unsigned
    signature: str = ""


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
    signature: str = ""  # the node's signature over task, attempt, node, output hash, usage
    # added with OpenAI fidelity: the calls the answer makes (finish reason `tool_calls`; the
    # output is then the text before them, often none), and every token's logprob if asked
    tool_calls: tuple[ToolCall, ...] = Field(default=(), exclude_if=unset)
    logprobs: tuple[TokenLogprob, ...] | None = Field(default=None, exclude_if=unset)
    # an embeddings task's vectors, one per input: little-endian float32, base64 (OpenAI's
    # `encoding_format: base64`, a quarter of the JSON floats' size)
    embeddings: tuple[str, ...] = Field(default=(), exclude_if=unset)


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
    signature: str = ""  # the node's signature (events/signing.py); none on `task.lost`


@event_type
class TaskLost(TaskFailed):
    """The orchestrator's verdict that the node running an attempt stopped heartbeating: a
    failure the node did not report itself (kind `worker_lost`, retried). A type of its own so
    that only the orchestrator may write it: `task.failed` is what nodes write, and sign."""

    type = "task.lost"


@event_type
class TaskDeadLettered(Event):
    """An attempt's work message was given up on by JetStream: delivered the most times allowed
    without a result (the workers that took it crashed, or failed it in a way they could not
    report). Not retried: the task, and unless tolerated the job, fails with this reason."""

    type = "task.dead_lettered"
    job_id: str
    task_id: str
    attempt: int
    consumer: str
    deliveries: int
    error: str


class Choice(BaseModel):
    """One of a job's `n` answers."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    index: int
    output: str
    finish_reason: FinishReason
    tool_calls: tuple[ToolCall, ...] = Field(default=(), exclude_if=unset)  # as on task.completed
    logprobs: tuple[TokenLogprob, ...] | None = Field(default=None, exclude_if=unset)


class Part(BaseModel):
    """One task's share of a multi-task job's result."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    task_id: str
    role: TaskRole
    index: int
    name: str | None = None
    model: str
    node_id: str | None = None
    status: Literal["completed", "failed"]
    output: str | None = None
    finish_reason: FinishReason | None = None
    error: str | None = None
    usage: Usage = Usage()


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
    # added with the patterns: every task's part, the comparison's outcome, what failed
    parts: tuple[Part, ...] = ()
    consensus: Consensus | None = None
    errors: tuple[str, ...] = ()
    # added with OpenAI fidelity: the (first) answer's tool calls and logprobs, as `output`
    tool_calls: tuple[ToolCall, ...] = Field(default=(), exclude_if=unset)
    logprobs: tuple[TokenLogprob, ...] | None = Field(default=None, exclude_if=unset)
    embeddings: tuple[str, ...] = Field(default=(), exclude_if=unset)  # as on task.completed
    # added with per-key usage (issue "Usage you can read"), copied from job.submitted so the
    # usage projection folds job.completed alone; None in older events
    model: str | None = None
    owner: str | None = None
    key_id: str | None = None
    end_user: str | None = None


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
    | TaskRerouted
    | TaskStarted
    | TaskCompleted
    | TaskFailed
    | TaskDeadLettered
    | JobCompleted
    | JobFailed
    | JobCancelled
)
TERMINAL_TYPES = frozenset({JobCompleted.type, JobFailed.type, JobCancelled.type})
