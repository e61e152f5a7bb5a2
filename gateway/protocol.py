"""OpenAI-shaped HTTP schemas, separate from events so each can evolve on its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from events.inference import MAX_TOKENS, ChatMessage, Prompt, SamplingParams, Usage
from gateway.unserved import unserved, unserved_in_message


class _In(BaseModel):
    # Fields beyond the model's are kept, to be refused by name unless they ask for nothing
    # (`gateway/unserved.py`): never silently ignored.
    model_config = ConfigDict(extra="allow")


class ContentPart(_In):
    """One part of a message's content array (only `text` parts are served)."""

    type: str
    text: str | None = None


class ChatMessageIn(_In):
    """A chat message as OpenAI clients send it."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        """The content as one string."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content)

    def unserved(self, index: int) -> Iterator[tuple[str, str]]:
        """(field path, why) for what this message carries that dim would not honour."""
        yield from unserved_in_message(index, self.model_extra or {})
        for j, part in enumerate(self.content if isinstance(self.content, list) else ()):
            where = f"messages.{index}.content.{j}"
            if part.type != "text":
                yield f"{where}.type", f"{part.type!r} content parts are not served yet (text only)"
            elif part.text is None:
                yield f"{where}.text", "a text content part needs its text"
            elif part.model_extra:
                yield f"{where}.{next(iter(part.model_extra))}", "unknown content part field"


class StreamOptions(BaseModel):
    """`stream_options`."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Sampling(_In):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=16, description="choices per request (each its own task)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(
        default=None, max_length=256, description="the end user, recorded on the job"
    )

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        """The sampling parameters dim carries to the engine."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=self.max_completion_tokens or self.max_tokens or default_max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=stop,
            seed=self.seed,
            n=self.n,
        )

    def unserved(self) -> Iterator[tuple[str, str]]:
        """(field path, why) for every field sent that dim would not honour."""
        yield from unserved(self.model_extra or {})

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessageIn] = Field(min_length=1)

    def unserved(self) -> Iterator[tuple[str, str]]:
        """As `_Sampling.unserved`, and what the messages carry."""
        yield from super().unserved()
        for i, message in enumerate(self.messages):
            yield from message.unserved(i)

    def prompt(self) -> Prompt:
        """The chat as dim's prompt."""
        return Prompt(
            messages=tuple(ChatMessage(role=m.role, content=m.text()) for m in self.messages)
        )


class CompletionRequest(_Sampling):
    """`POST /v1/completions`."""

    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("send one prompt per request (a list of exactly one string)")
        return value

    def text_prompt(self) -> Prompt:
        """The prompt as dim's prompt."""
        return Prompt(text=self.prompt if isinstance(self.prompt, str) else self.prompt[0])


class UsageOut(BaseModel):
    """Token counts as OpenAI reports them."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> UsageOut:
        """From dim's usage."""
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        )


class AssistantMessage(BaseModel):
    """The answer's message."""

    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    """One choice of a chat completion."""

    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    """A non-streamed chat completion."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageOut
    system_fingerprint: str | None = None


class TextChoice(BaseModel):
    """One choice of a text completion."""

    index: int = 0
    text: str
    finish_reason: str
    logprobs: None = None


class Completion(BaseModel):
    """A non-streamed text completion."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: UsageOut
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    """One model in `GET /v1/models`, and `GET /v1/models/{id}`."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "dim"
    context_length: int | None = Field(
        default=None, description="the largest context (prompt + completion) of its live nodes"
    )
    engines: list[str] = Field(default_factory=list, description="engines of its live nodes")
    nodes: int = Field(default=0, description="live nodes serving it")
    capabilities: list[str] = Field(
        default_factory=list,
        description="what requests to it may ask for (chat, completions); fields not served "
        "are refused by name (docs/api.md)",
    )


class ModelList(BaseModel):
    """`GET /v1/models`: models with at least one live node."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
