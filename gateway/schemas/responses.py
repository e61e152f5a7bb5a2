"""`POST /v1/responses`, the stateless part of OpenAI's Responses API: a request's input items,
instructions, function tools and text format, as dim's prompt and sampling parameters.

Stateful fields (`previous_response_id`, `conversation`, `store: true`, `background`) and the
built-in tools (web search, files, computer use) are refused by name: dim keeps no responses to
continue from. The chat path serves the rest, so a response is a job like any other.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from events.inference import (
    MAX_TOKENS,
    ChatMessage,
    ImageRef,
    Prompt,
    ResponseFormat,
    SamplingParams,
)
from events.tools import MAX_TOOLS, TOOL_NAME, Function, Tool, ToolCall
from gateway.protocol import (
    MAX_IMAGE_URL_CHARS,
    ImageUrl,
    check_schema,
    check_tools,
    tool_choice_of,
)
from gateway.unserved import IGNORED

Role = Literal["user", "assistant", "system", "developer"]

# Fields of OpenAI's Responses request dim does not serve, with the value that asks for nothing.
_NEUTRAL: dict[str, tuple[Any, str]] = {
    "previous_response_id": (None, "dim keeps no responses: send the whole conversation as input"),
    "conversation": (None, "dim keeps no conversations: send the whole conversation as input"),
    "store": (False, "dim does not store responses (send store: false)"),
    "background": (False, "background responses are not served (use the jobs API)"),
    "include": ([], "no additional output data is served"),
    "reasoning": (None, "reasoning options are not served"),
    "prompt": (None, "prompt templates are not served"),
    "truncation": ("disabled", "truncation is not served"),
    "top_logprobs": (0, "logprobs are served by POST /v1/chat/completions"),
    "max_tool_calls": (None, "max_tool_calls is not served"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputPart(_Strict):
    """A part of an input message's content."""

    type: Literal["input_text", "output_text", "input_image"]
    text: str | None = None
    image_url: str | None = Field(default=None, min_length=1, max_length=MAX_IMAGE_URL_CHARS)

    @field_validator("image_url")
    @classmethod
    def _fetchable(cls, value: str | None) -> str | None:
        return ImageUrl.model_validate({"url": value}).url if value is not None else None

    detail: Literal["auto", "low", "high"] = "auto"
    annotations: list[Any] | None = None  # sent back with earlier output_text parts


class InputItem(_Strict):
    """A message, a function call an earlier answer made, or a function's output."""

    type: Literal["message", "function_call", "function_call_output"] = "message"
    role: Role | None = None
    content: str | list[InputPart] | None = None
    id: str | None = None
    status: str | None = None
    call_id: str | None = Field(default=None, min_length=1, max_length=256)
    name: str | None = Field(default=None, pattern=TOOL_NAME)
    arguments: str | None = None
    output: str | None = None


class FunctionTool(_Strict):
    """A function tool, in the Responses API's flat shape."""

    type: Literal["function"]
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(_Strict):
    """`tool_choice: {"type": "function", "name": ...}`."""

    type: Literal["function"]
    name: str = Field(pattern=TOOL_NAME)


class TextFormat(_Strict):
    """`text.format`."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, pattern=TOOL_NAME)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Strict):
    """`text`."""

    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None  # the only one served: the default


class ResponseRequest(BaseModel):
    """`POST /v1/responses`."""

    model_config = ConfigDict(extra="allow")  # the rest is refused by name

    model: str = Field(min_length=1)
    input: str | list[InputItem]
    instructions: str | None = None
    tools: list[FunctionTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    text: TextConfig | None = None
    stream: bool = False
    user: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _consistent(self) -> ResponseRequest:
        fmt = self.text.format if self.text is not None else None
        if fmt is not None and fmt.type == "json_schema":
            if fmt.schema_ is None or fmt.name is None:
                raise ValueError("text.format json_schema needs its name and schema")
            check_schema(fmt.schema_, "text.format")
        check_tools(self.tools, {t.name for t in self.tools or ()}, *self._choice())
        return self

    def _choice(self) -> tuple[str | None, str | None]:
        """`tool_choice` as (mode, function name)."""
        choice = self.tool_choice
        if isinstance(choice, NamedFunction):
            return "function", choice.name
        return choice, None

    def unserved(self) -> Iterator[tuple[str, str]]:
        """(field, why) for every field sent that dim would not honour."""
        for name, value in (self.model_extra or {}).items():
            if name in _NEUTRAL:
                neutral, why = _NEUTRAL[name]
                if value not in (None, neutral):
                    yield name, why
            elif name not in IGNORED:
                yield name, f"unknown parameter {name!r}"
        for i, item in enumerate(self.input if isinstance(self.input, list) else ()):
            yield from _unserved_item(i, item)

    def prompt(self) -> Prompt:
        """The instructions and input as a chat."""
        messages: list[ChatMessage] = []
        if self.instructions:
            messages.append(ChatMessage(role="developer", content=self.instructions))
        if isinstance(self.input, str):
            messages.append(ChatMessage(role="user", content=self.input))
        else:
            for item in self.input:
                _add(messages, item)
        tools = tuple(
            Tool(
                function=Function(
                    name=t.name,
                    description=t.description,
                    parameters=t.parameters,
                    strict=t.strict is not False,  # the Responses API's default: strict
                )
            )
            for t in self.tools or ()
        )
        return Prompt(messages=tuple(messages), tools=tools)

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        """The sampling parameters dim carries to the engine."""
        carried = tool_choice_of(*self._choice(), self.parallel_tool_calls)
        fmt = self.text.format if self.text is not None else None
        return SamplingParams(
            max_tokens=self.max_output_tokens or default_max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            tool_choice=carried,
            response_format=ResponseFormat(
                type=fmt.type, json_schema=fmt.schema_, name=fmt.name, strict=bool(fmt.strict)
            )
            if fmt is not None and fmt.type != "text"
            else None,
        )


def _unserved_item(i: int, item: InputItem) -> Iterator[tuple[str, str]]:
    where = f"input.{i}"
    if item.type == "message":
        if item.role is None:
            yield f"{where}.role", "a message needs its role"
        for j, part in enumerate(item.content if isinstance(item.content, list) else ()):
            if part.type == "input_image" and (item.role != "user" or not part.image_url):
                yield f"{where}.content.{j}", "an input_image is a user's, with its image_url"
            elif part.type != "input_image" and part.text is None:
                yield f"{where}.content.{j}.text", "a text part needs its text"
    elif item.type == "function_call":
        if not (item.call_id and item.name and item.arguments is not None):
            yield where, "a function_call needs its call_id, name and arguments"
    elif not (item.call_id and item.output is not None):
        yield where, "a function_call_output needs its call_id and output"


def _add(messages: list[ChatMessage], item: InputItem) -> None:
    """Append `item` to the chat (function calls join the assistant turn before them)."""
    if item.type == "function_call":
        call = ToolCall(id=item.call_id or "", name=item.name or "", arguments=item.arguments or "")
        last = messages[-1] if messages else None
        if last is not None and last.role == "assistant" and not last.content:
            messages[-1] = last.model_copy(update={"tool_calls": (*last.tool_calls, call)})
        else:
            messages.append(ChatMessage(role="assistant", content="", tool_calls=(call,)))
        return
    if item.type == "function_call_output":
        messages.append(
            ChatMessage(role="tool", content=item.output or "", tool_call_id=item.call_id)
        )
        return
    content = item.content
    if isinstance(content, list):
        text = "".join(p.text or "" for p in content if p.type != "input_image")
        images = tuple(
            ImageRef(url=p.image_url, detail=p.detail)
            for p in content
            if p.type == "input_image" and p.image_url
        )
    else:
        text, images = content or "", ()
    messages.append(ChatMessage(role=item.role or "user", content=text, images=images))
