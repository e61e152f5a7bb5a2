"""Schemas of dim's own API (jobs, keys, nodes); OpenAI's are in `protocol`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from events.accounts import Role
from events.inference import ChatMessage, Prompt, SamplingParams
from services.orchestrator.state import JobState


class JobRequest(BaseModel):
    """`POST /v1/jobs`: one prompt (text or chat messages) for one model."""

    model_config = ConfigDict(extra="forbid")

    pattern: Literal["single"] = "single"
    model: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    max_tokens: int = Field(default=256, ge=1, le=1_000_000)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=list, max_length=4)
    seed: int | None = None
    node: str | None = Field(default=None, description="pin the job to this node while it is live")
    max_attempts: int = Field(default=3, ge=1, le=20)

    @model_validator(mode="after")
    def _one_input(self) -> JobRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of 'prompt' or 'messages'")
        return self

    def to_prompt(self) -> Prompt:
        """dim's prompt."""
        if self.prompt is not None:
            return Prompt(text=self.prompt)
        return Prompt(messages=tuple(self.messages or ()))

    def sampling(self) -> SamplingParams:
        """dim's sampling parameters."""
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(self.stop),
            seed=self.seed,
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
    model: str
    status: str
    attempt: int
    node_id: str | None
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
                    model=t.model,
                    status=t.status,
                    attempt=t.attempt,
                    node_id=t.ran_on,
                    finish_reason=t.finish_reason,
                    error=t.error,
                )
                for t in view.tasks
            ],
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


class KeyRequest(BaseModel):
    """`POST /v1/keys`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=100)
    role: Role = "member"
    principal_id: str | None = Field(default=None, description="admins may issue keys for others")


class KeyOut(BaseModel):
    """A key without its secret."""

    key_id: str
    principal_id: str
    tenant: str
    roles: list[str]
    name: str
    created_at: datetime


class KeyIssued(KeyOut):
    """A new key, with the secret: shown this once."""

    key: str


class RegisterRequest(BaseModel):
    """`POST /v1/auth/register`."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
    password: str = Field(min_length=1, max_length=1024)
    role: Role = "member"


class Registered(BaseModel):
    """A new account."""

    principal_id: str
    email: str
    tenant: str
    roles: list[str]


class LoginRequest(BaseModel):
    """`POST /v1/auth/login`."""

    email: str
    password: str


class RefreshRequest(BaseModel):
    """`POST /v1/auth/refresh`."""

    refresh_token: str


class TokenPair(BaseModel):
    """An access token (short-lived JWT) and the session's refresh token (rotates on use)."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    refresh_token: str


class Me(BaseModel):
    """The caller."""

    principal_id: str
    tenant: str
    roles: list[str]
    authenticated_by: Literal["api_key", "session"]
    key_id: str | None = None
    session_id: str | None = None
