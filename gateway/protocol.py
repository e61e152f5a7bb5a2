"""OpenAI-shaped HTTP schemas, separate from events so each can evolve on its own."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from events.inference import (
    MAX_LOGIT_BIAS,
    MAX_TOKENS,
    MAX_TOP_LOGPROBS,
    ChatMessage,
    ImageRef,
    Prompt,
    ResponseFormat,
    SamplingParams,
    Usage,
)
from events.tools import MAX_TOOLS, TOOL_NAME, Function, Tool, ToolCall, ToolChoice
from gateway.unserved import unserved, unserved_in_message

MAX_IMAGE_URL_CHARS = 20_000_000  # a data URL of a ~15 MB image; the body limit bounds it too
MAX_SCHEMA_BYTES = 65_536  # a response_format schema, serialized
MAX_TOOLS_BYTES = 262_144  # all of a request's tools, serialized


class _In(BaseModel):
    # Fields beyond the model's are kept, to be refused by name unless they ask for nothing
    # (`gateway/unserved.py`): never silently ignored.
    model_config = ConfigDict(extra="allow")


def check_tools(
    tools: Sequence[BaseModel] | None, offered: set[str], mode: str | None, name: str | None
) -> None:
    """Raise ValueError unless the tools fit their bound and the tool choice (`mode` none, auto,
    required or function; `name` the function's) asks for a call among them."""
    if tools and len(json.dumps([t.model_dump() for t in tools])) > MAX_TOOLS_BYTES:
        raise ValueError(f"tools: {MAX_TOOLS_BYTES:,} bytes at most, all together")
    if mode in ("required", "function"):
        if not offered:
            raise ValueError("tool_choice: a tool call is asked for but no tools are sent")
        if mode == "function" and name not in offered:
            raise ValueError(f"tool_choice: no tool is named {name!r}")


def check_schema(schema: dict[str, Any], where: str) -> None:
    """Raise ValueError when a response schema is over its bound."""
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise ValueError(f"{where}: a schema may have {MAX_SCHEMA_BYTES:,} bytes")


def tool_choice_of(mode: str | None, name: str | None, parallel: bool | None) -> ToolChoice | None:
    """The tool choice as dim carries it (None: the default, auto)."""
    carried = ToolChoice(mode=mode, name=name) if mode is not None else None
    if parallel is not None:
        carried = (carried or ToolChoice()).model_copy(update={"parallel": parallel})
    return carried


class ImageUrl(BaseModel):
    """`image_url` of an image content part."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=MAX_IMAGE_URL_CHARS)
    detail: Literal["auto", "low", "high"] = "auto"

    @field_validator("url")
    @classmethod
    def _fetchable(cls, value: str) -> str:
        if not value.startswith(("https://", "http://", "data:image/")):
            raise ValueError("an image URL is an http(s) URL or a data:image/...;base64 URL")
        return value


class ContentPart(_In):
    """One part of a message's content array: text, or an image (for engines that take images)."""

    type: str
    text: str | None = None
    image_url: ImageUrl | None = None


class FunctionCallIn(BaseModel):
    """The function an earlier assistant turn called."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TOOL_NAME)
    arguments: str


class ToolCallIn(BaseModel):
    """A tool call of an earlier assistant turn, sent back with the conversation."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(_In):
    """A chat message as OpenAI clients send it."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=256)
    name: str | None = Field(default=None, min_length=1, max_length=256)

    def text(self) -> str:
        """The content's text as one string."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")

    def images(self) -> tuple[ImageRef, ...]:
        """The content's images, in order."""
        if not isinstance(self.content, list):
            return ()
        return tuple(
            ImageRef(url=p.image_url.url, detail=p.image_url.detail)
            for p in self.content
            if p.type == "image_url" and p.image_url is not None
        )

    def message(self) -> ChatMessage:
        """As dim carries it."""
        return ChatMessage(
            role=self.role,
            content=self.text(),
            images=self.images(),
            tool_calls=tuple(
                ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
                for c in self.tool_calls or ()
            ),
            tool_call_id=self.tool_call_id,
            name=self.name,
        )

    def unserved(self, index: int) -> Iterator[tuple[str, str]]:
        """(field path, why) for what this message carries that dim would not honour, or that
        OpenAI would refuse."""
        yield from unserved_in_message(index, self.model_extra or {})
        where = f"messages.{index}"
        if self.role == "tool" and self.tool_call_id is None:
            yield f"{where}.tool_call_id", "a tool message answers a call: name it"
        if self.role != "tool" and self.tool_call_id is not None:
            yield f"{where}.tool_call_id", "only a tool message answers a call"
        if self.role != "assistant" and self.tool_calls:
            yield f"{where}.tool_calls", "only an assistant message makes tool calls"
        for j, part in enumerate(self.content if isinstance(self.content, list) else ()):
            at = f"{where}.content.{j}"
            if part.type == "image_url":
                if part.image_url is None:
                    yield f"{at}.image_url", "an image content part needs its image_url"
                elif self.role != "user":
                    yield f"{at}.type", "images are sent in user messages"
            elif part.type != "text":
                yield f"{at}.type", f"{part.type!r} content parts are not served (text, image_url)"
            elif part.text is None:
                yield f"{at}.text", "a text content part needs its text"
            if part.model_extra:
                yield f"{at}.{next(iter(part.model_extra))}", "unknown content part field"


class FunctionIn(BaseModel):
    """A function a chat offers the model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(BaseModel):
    """One entry of `tools`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionIn


class NamedFunction(BaseModel):
    """The function a named `tool_choice` forces."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TOOL_NAME)


class NamedToolChoice(BaseModel):
    """`tool_choice: {"type": "function", "function": {"name": ...}}`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: NamedFunction


class JsonSchemaIn(BaseModel):
    """`response_format.json_schema`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormatIn(BaseModel):
    """`response_format`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaIn | None = None

    def carried(self) -> ResponseFormat:
        """As dim carries it."""
        spec = self.json_schema
        return ResponseFormat(
            type=self.type,
            json_schema=spec.schema_ if spec is not None else None,
            name=spec.name if spec is not None else None,
            strict=bool(spec and spec.strict),
        )


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
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(
        default=None, max_length=MAX_LOGIT_BIAS, description="token id -> bias (-100 to 100)"
    )

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not (token.isascii() and token.isdigit() and int(token) < 2**31):
                raise ValueError(f"logit_bias keys are token ids: {token!r} is not one")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias of token {token} is {bias}: -100 to 100")
        return value

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
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            **self._more(),
        )

    def _more(self) -> dict[str, Any]:
        """Parameters only one endpoint has."""
        return {}

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
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormatIn | None = None
    tools: list[ToolIn] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_schema":
            if fmt.json_schema is None:
                raise ValueError("response_format json_schema needs its json_schema")
            check_schema(fmt.json_schema.schema_, "response_format")
        offered = {t.function.name for t in self.tools or ()}
        check_tools(self.tools, offered, *self._choice())
        return self

    def _choice(self) -> tuple[str | None, str | None]:
        """`tool_choice` as (mode, function name)."""
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice):
            return "function", choice.function.name
        return choice, None

    def unserved(self) -> Iterator[tuple[str, str]]:
        """As `_Sampling.unserved`, and what the messages carry."""
        yield from super().unserved()
        for i, message in enumerate(self.messages):
            yield from message.unserved(i)

    def prompt(self) -> Prompt:
        """The chat as dim's prompt."""
        tools = tuple(
            Tool(
                function=Function(
                    name=t.function.name,
                    description=t.function.description,
                    parameters=t.function.parameters,
                    strict=bool(t.function.strict),
                )
            )
            for t in self.tools or ()
        )
        return Prompt(messages=tuple(m.message() for m in self.messages), tools=tools)

    def _more(self) -> dict[str, Any]:
        carried = tool_choice_of(*self._choice(), self.parallel_tool_calls)
        fmt = self.response_format
        return {
            "logprobs": bool(self.logprobs),
            "top_logprobs": self.top_logprobs or 0,
            "response_format": fmt.carried() if fmt is not None and fmt.type != "text" else None,
            "tool_choice": carried,
        }


class CompletionRequest(_Sampling):
    """`POST /v1/completions`."""

    prompt: str | list[str]
    logprobs: int | None = Field(
        default=None, ge=0, le=5, description="the likeliest tokens to report at each position"
    )

    def _more(self) -> dict[str, Any]:
        if self.logprobs is None:
            return {}
        return {"logprobs": True, "top_logprobs": self.logprobs}

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


class FunctionCallOut(BaseModel):
    """The function a tool call calls."""

    name: str
    arguments: str = Field(description="JSON text, as the model produced it")


class ToolCallOut(BaseModel):
    """One call the answer makes."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    """The answer's message."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None
    refusal: None = None


class ChatChoice(BaseModel):
    """One choice of a chat completion."""

    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: dict[str, Any] | None = Field(
        default=None, description="`content`: each token's logprob and its top alternatives"
    )


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
    logprobs: dict[str, Any] | None = Field(
        default=None, description="tokens, token_logprobs, top_logprobs, text_offset"
    )


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
        description="what some live node serving it can do (chat, completions, tools, "
        "structured_outputs, logprobs, penalties, logit_bias, images, embeddings); a request "
        "goes to a node that can do all it asks, and a field none can honour is refused by name",
    )


class ModelList(BaseModel):
    """`GET /v1/models`: models with at least one live node."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
