"""Value types of an inference request shared by events, engines and the gateway."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_TOKENS = 1_000_000  # the most tokens one request may ask for (any model's context is less)


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ChatMessage(_Value):
    """One chat turn."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class SamplingParams(_Value):
    """How to sample a completion; the subset of OpenAI's parameters dim carries end to end."""

    max_tokens: int = Field(default=256, ge=1, le=MAX_TOKENS)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=16)


class Prompt(_Value):
    """The input of one generation: plain text or chat messages (exactly one of them)."""

    text: str | None = None
    messages: tuple[ChatMessage, ...] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Prompt:
        if (self.text is None) == (self.messages is None):
            raise ValueError("a prompt needs exactly one of 'text' or 'messages'")
        return self

    def render(self) -> str:
        """The prompt as one string (chat turns as 'role: content' lines) for engines without a chat template."""
        if self.text is not None:
            return self.text
        assert self.messages is not None
        return "\n".join(f"{m.role}: {m.content}" for m in self.messages)


class Usage(_Value):
    """Token counts of one or more generations."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    # True when some count is an estimate (an upstream server that reports no usage); added later
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            estimated=self.estimated or other.estimated,
        )


FinishReason = Literal["stop", "length", "abort", "error"]
