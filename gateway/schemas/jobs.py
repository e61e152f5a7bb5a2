"""Schemas of the jobs API: the request (every pattern's fields), the accepted answer, a job's
view, a page of jobs, an event of its history."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from events.inference import MAX_TOKENS, ChatMessage, Prompt, SamplingParams
from events.jobs import JobSubmitted, Part
from events.patterns import (
    MAX_SHARDS,
    Candidate,
    Chained,
    Collaborative,
    Comparative,
    Consensus,
    OnError,
    Pattern,
    RetryPolicy,
    Routing,
    Split,
    Step,
)
from projections.job_state import JobState
from services.jobs.admission import INTERACTIVE_PRIORITY
from services.jobs.patterns import split


class CandidateIn(BaseModel):
    """One model of a comparative job."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0, le=1_000_000, description="its vote (weighted)")
    node: str | None = Field(default=None, description="pin this candidate to a node")


class StepIn(BaseModel):
    """One step of a chained job."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    prompt: str = Field(
        min_length=1, description="template: {{ input }}, {{ previous }}, {{ steps.<name> }}"
    )
    model: str | None = Field(default=None, description="default: the job's model")
    node: str | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=86_400)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_attempts: int | None = Field(default=None, ge=1, le=20)


class JobRequest(BaseModel):
    """`POST /v1/jobs`. Fields by pattern (docs/patterns.md):

    - single: `model` + `prompt` or `messages`.
    - collaborative: `model` + `inputs` (or one `input` with `split`); `aggregate` concat or
      reduce (`reduce_prompt`); `on_error` fail or partial.
    - comparative: `models` (2-16) + `prompt`/`messages`; `consensus` majority, weighted or
      judge (`judge_model`, `judge_prompt`); `min_agreement`; `on_error`.
    - chained: `model` (default of the steps) + `prompt`/`messages` (the input) + `steps`.
    """

    model_config = ConfigDict(extra="forbid")

    pattern: Pattern = "single"
    model: str | None = Field(default=None, min_length=1)
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    # collaborative
    inputs: list[str] | None = Field(default=None, min_length=1, max_length=MAX_SHARDS)
    input: str | None = Field(default=None, description="one large input, cut by `split`")
    split: Split | None = None
    aggregate: Literal["concat", "reduce"] = "concat"
    separator: str = "\n"
    reduce_prompt: str | None = None
    on_error: OnError = "fail"
    # comparative
    models: list[str | CandidateIn] | None = Field(default=None, min_length=2, max_length=16)
    consensus: Literal["majority", "weighted", "judge"] = "majority"
    judge_model: str | None = None
    judge_prompt: str | None = None
    min_agreement: float = Field(default=0.5, ge=0, le=1)
    # chained
    steps: list[StepIn] | None = Field(default=None, min_length=1, max_length=32)
    # every pattern
    routing: Routing = Routing()
    max_tokens: int = Field(default=256, ge=1, le=MAX_TOKENS)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=list, max_length=4)
    seed: int | None = None
    node: str | None = Field(default=None, description="pin the job to this node while it is live")
    max_attempts: int | None = Field(default=None, ge=1, le=20)
    priority: int = Field(
        default=INTERACTIVE_PRIORITY,
        ge=0,
        le=9,
        description="when a model's queue is full, 9 goes first; 1 by default, as completions "
        "(0 is where batch lines wait)",
    )
    retry: RetryPolicy = RetryPolicy()
    deadline_s: float | None = Field(
        default=None, gt=0, le=7 * 86_400, description="the whole job must end within this"
    )

    @model_validator(mode="after")
    def _fields_of_the_pattern(self) -> JobRequest:
        has_prompt = self.prompt is not None or self.messages is not None
        if self.prompt is not None and self.messages is not None:
            raise ValueError("send exactly one of 'prompt' or 'messages', not both")
        if self.pattern == "collaborative":
            if (self.inputs is None) == (self.input is None):
                raise ValueError("a collaborative job needs exactly one of 'inputs' or 'input'")
        elif not has_prompt:
            raise ValueError(f"a {self.pattern} job needs exactly one of 'prompt' or 'messages'")
        if self.pattern == "comparative":
            if not self.models:
                raise ValueError("a comparative job needs 'models' (two or more)")
        elif not self.model:
            raise ValueError(f"a {self.pattern} job needs 'model'")
        if self.pattern == "chained" and not self.steps:
            raise ValueError("a chained job needs 'steps'")
        return self

    def to_prompt(self) -> Prompt | None:
        """dim's prompt (None when the request has none)."""
        if self.prompt is not None:
            return Prompt(text=self.prompt)
        if self.messages is not None:
            return Prompt(messages=tuple(self.messages))
        return None

    def sampling(self) -> SamplingParams:
        """dim's sampling parameters."""
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(self.stop),
            seed=self.seed,
        )

    def to_event(self, job_id: str, *, max_attempts_default: int) -> JobSubmitted:
        """The `job.submitted` this request asks for (owner and tenant set by the caller)."""
        collaborative = comparative = chained = None
        model = self.model or ""
        if self.pattern == "collaborative":
            texts = (
                self.inputs
                if self.inputs is not None
                else split(self.input or "", self.split or Split())
            )
            collaborative = Collaborative(
                inputs=tuple(Prompt(text=t) for t in texts),
                aggregate=self.aggregate,
                separator=self.separator,
                on_error=self.on_error,
                **({"reduce_prompt": self.reduce_prompt} if self.reduce_prompt else {}),
            )
        elif self.pattern == "comparative":
            candidates = tuple(
                Candidate(model=c)
                if isinstance(c, str)
                else Candidate(model=c.model, weight=c.weight, node_id=c.node)
                for c in self.models or ()
            )
            comparative = Comparative(
                candidates=candidates,
                consensus=self.consensus,
                judge_model=self.judge_model,
                min_agreement=self.min_agreement,
                on_error=self.on_error,
                **({"judge_prompt": self.judge_prompt} if self.judge_prompt else {}),
            )
            model = model or candidates[0].model
        elif self.pattern == "chained":
            chained = Chained(
                steps=tuple(
                    Step(
                        name=s.name,
                        prompt=s.prompt,
                        model=s.model,
                        node_id=s.node,
                        timeout_s=s.timeout_s,
                        max_tokens=s.max_tokens,
                        max_attempts=s.max_attempts,
                    )
                    for s in self.steps or ()
                )
            )
        return JobSubmitted(
            job_id=job_id,
            pattern=self.pattern,
            model=model,
            prompt=self.to_prompt(),
            params=self.sampling(),
            node_id=self.node,
            max_attempts=self.max_attempts or max_attempts_default,
            routing=self.routing,
            retry=self.retry,
            deadline_s=self.deadline_s,
            priority=self.priority,
            collaborative=collaborative,
            comparative=comparative,
            chained=chained,
        )


class JobAccepted(BaseModel):
    """The answer to `POST /v1/jobs`."""

    job_id: str
    status: str
    created: bool = Field(
        description="false when an earlier request with the same Idempotency-Key made it"
    )


class TaskOut(BaseModel):
    """One task of a job."""

    task_id: str
    role: str = Field(description="main, shard, reduce, candidate, judge or step")
    index: int
    name: str | None = Field(description="a chain step's name")
    model: str
    status: str = Field(description="planned, dispatched, running, completed or failed")
    attempt: int
    node_id: str | None = Field(description="the node that ran (or runs) the current attempt")
    target: str | None = Field(description="the node it was sent to (null: the shared subject)")
    finish_reason: str | None
    error: str | None


class UsageView(BaseModel):
    """Token counts."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class JobOut(BaseModel):
    """A job as the job-status projection holds it."""

    job_id: str
    status: str
    pattern: str
    model: str
    owner: str
    tenant: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    output: str | None
    finish_reason: str | None
    usage: UsageView
    ttft_ms: float | None
    error: str | None
    error_code: str | None
    tasks: list[TaskOut]
    parts: list[Part] = Field(description="each task's output (multi-task patterns)")
    consensus: Consensus | None = Field(description="a comparative job's outcome")
    errors: list[str] = Field(description="tasks that failed in a job that finished without them")
    trimmed: bool = Field(
        False,
        description="listed without its output and its parts' outputs, which made its stored "
        "view too large (GET the job for them)",
    )

    @classmethod
    def of(cls, view: JobState) -> JobOut:
        """From the projection's view."""
        return cls(
            job_id=view.job_id,
            status=view.status,
            pattern=view.pattern,
            model=view.model,
            owner=view.owner,
            tenant=view.tenant,
            created_at=view.created_at,
            started_at=view.started_at,
            finished_at=view.finished_at,
            output=view.output,
            finish_reason=view.finish_reason,
            usage=UsageView(
                prompt_tokens=view.usage.prompt_tokens,
                completion_tokens=view.usage.completion_tokens,
                total_tokens=view.usage.total_tokens,
            ),
            ttft_ms=view.ttft_ms,
            error=view.error,
            error_code=view.error_code,
            tasks=[
                TaskOut(
                    task_id=t.task_id,
                    role=t.role,
                    index=t.index,
                    name=t.name,
                    model=t.model,
                    status=t.status,
                    attempt=t.attempt,
                    node_id=t.ran_on,
                    target=t.target,
                    finish_reason=t.finish_reason,
                    error=t.error,
                )
                for t in view.tasks
            ],
            parts=list(view.parts),
            consensus=view.consensus,
            errors=list(view.errors),
            trimmed=view.trimmed,
        )


class JobPage(BaseModel):
    """A page of jobs, newest first; pass `next` as `before` for the next page."""

    data: list[JobOut]
    next: str | None


class EventOut(BaseModel):
    """One stored event of a job's history."""

    seq: int
    id: str
    type: str
    at: datetime
    actor: str
    data: dict[str, Any]
