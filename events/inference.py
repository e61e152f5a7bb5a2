"""Value types of an inference request shared by events, engines and the gateway."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from events.tools import MAX_TOOLS, Tool, ToolCall, ToolChoice

MAX_TOKENS = 1_000_000  # the most tokens one request may ask for (any model's context is less)
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
MAX_LOGIT_BIAS = 1024  # token biases in one request
MAX_EMBEDDING_INPUTS = 128  # texts one embeddings request may embed (their vectors fill one event)
MAX_EMBEDDING_DIMENSIONS = 8192


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


def unset(value: object) -> bool:
    """Whether a field added later holds its (falsy) default: such fields are left out of the
    JSON (`Field(exclude_if=unset)`), so what older versions wrote stays byte for byte the same
    and a plain request costs nothing for the fields it does not use."""
    return not value


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class ImageRef(_Value):
    """An image in a chat message: an https URL or a ``data:image/...;base64,`` URL."""

    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class ChatMessage(_Value):
    """One chat turn: its text, and (added later, absent in older events) its images, the tool
    calls an assistant turn made, the call a tool turn answers, and the participant's name."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str
    images: tuple[ImageRef, ...] = Field(default=(), exclude_if=unset)  # after the text, in order
    tool_calls: tuple[ToolCall, ...] = Field(default=(), exclude_if=unset)
    tool_call_id: str | None = Field(default=None, exclude_if=unset)
    name: str | None = Field(default=None, exclude_if=unset)

    def render(self) -> str:
        """The turn as one 'role: content' line (tool calls and results spelled out)."""
        who = f"{self.role}({self.name})" if self.name else self.role
        if self.tool_call_id is not None:
            who = f"{who}[{self.tool_call_id}]"
        calls = "".join(f" <call {c.name} {c.arguments}>" for c in self.tool_calls)
        images = "".join(f" <image {_digest(i.url)}>" for i in self.images)
        return f"{who}: {self.content}{images}{calls}"


class ResponseFormat(_Value):
    """What the answer must be: free text, any JSON object, or JSON valid against a schema."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None  # the schema (type `json_schema`)
    name: str | None = None
    strict: bool = False

    @property
    def structured(self) -> bool:
        """Whether the answer must be JSON."""
        return self.type != "text"


class TopLogprob(_Value):
    """One of the likeliest tokens at a position."""

    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None

    @field_validator("logprob")
    @classmethod
    def _finite(cls, value: float) -> float:
        # an impossible token is -inf to an engine; OpenAI reports it as -9999.0 (and JSON has
        # no infinity)
        return value if value >= -9999.0 else -9999.0


class TokenLogprob(TopLogprob):
    """The sampled token at a position, with the likeliest alternatives (`top_logprobs`)."""

    top_logprobs: tuple[TopLogprob, ...] = ()


class SamplingParams(_Value):
    """How to sample a completion; the subset of OpenAI's parameters dim carries end to end."""

    max_tokens: int = Field(default=256, ge=1, le=MAX_TOKENS)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=16)
    # added with OpenAI fidelity (issue 18); absent in older events, read as these defaults
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, exclude_if=unset)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, exclude_if=unset)
    logit_bias: dict[int, float] = Field(
        default_factory=dict, max_length=MAX_LOGIT_BIAS, exclude_if=unset
    )
    logprobs: bool = Field(default=False, exclude_if=unset)  # the sampled tokens' logprobs
    top_logprobs: int = Field(default=0, ge=0, le=MAX_TOP_LOGPROBS, exclude_if=unset)
    response_format: ResponseFormat | None = Field(default=None, exclude_if=unset)  # None: text
    # None: auto (with tools), none (without)
    tool_choice: ToolChoice | None = Field(default=None, exclude_if=unset)
    # an embeddings request: the prompt's `texts` are embedded, not continued
    embed: bool = Field(default=False, exclude_if=unset)
    dimensions: int | None = Field(
        default=None, ge=1, le=MAX_EMBEDDING_DIMENSIONS, exclude_if=unset
    )

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, value: dict[int, float]) -> dict[int, float]:
        for token, bias in value.items():
            if not -100 <= bias <= 100 or token < 0:
                raise ValueError(f"logit_bias: token {token} has bias {bias} (-100 to 100)")
        return value

    @property
    def structured(self) -> bool:
        """Whether the answer must be JSON (a schema, any object, or a forced tool call)."""
        forced = self.tool_choice is not None and self.tool_choice.forced
        return forced or (self.response_format is not None and self.response_format.structured)

    @property
    def resumable(self) -> bool:
        """Whether an attempt may continue the text an earlier one streamed: not when the
        answer is constrained from its first token (JSON) or reports every token's logprob."""
        return not (self.structured or self.logprobs or self.embed)


class Prompt(_Value):
    """The input of one generation: plain text or chat messages (exactly one of them)."""

    text: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    tools: tuple[Tool, ...] = Field(default=(), max_length=MAX_TOOLS, exclude_if=unset)
    # the inputs of an embeddings request (instead of `text` or `messages`)
    texts: tuple[str, ...] | None = Field(
        default=None, min_length=1, max_length=MAX_EMBEDDING_INPUTS, exclude_if=unset
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Prompt:
        given = (self.text is not None) + (self.messages is not None) + (self.texts is not None)
        if given != 1:
            raise ValueError("a prompt needs exactly one of 'text', 'messages' or 'texts'")
        if self.tools and self.messages is None:
            raise ValueError("tools are offered to a chat: a text prompt has none")
        return self

    def render(self) -> str:
        """The prompt as one string (chat turns as 'role: content' lines) for engines without a chat template."""
        if self.text is not None:
            return self.text
        if self.texts is not None:
            return "\n".join(self.texts)
        assert self.messages is not None
        return "\n".join(m.render() for m in self.messages)

    def size(self) -> int:
        """Bytes of everything an engine is given: the rendered text, tools, image URLs."""
        size = len(self.render().encode())
        size += sum(len(t.model_dump_json()) for t in self.tools)
        for m in self.messages or ():
            size += sum(len(i.url) for i in m.images)
        return size


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


FinishReason = Literal["stop", "length", "abort", "error", "tool_calls"]
