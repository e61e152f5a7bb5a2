"""Tool calling as dim carries it end to end: the tools a chat offers the model, the choice that
forces one, and the calls an answer makes — OpenAI's shapes without the HTTP envelope."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TOOL_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI's rule for a function's name
MAX_TOOLS = 128  # OpenAI's limit on the tools of one request


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Function(_Value):
    """A function the model may call; `parameters` is the JSON schema of its arguments."""

    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # None: a function of no arguments
    strict: bool = False

    def schema_of_arguments(self) -> dict[str, Any]:
        """The JSON schema its arguments must satisfy (an empty object when it takes none)."""
        if self.parameters is None:
            return {"type": "object", "properties": {}, "additionalProperties": False}
        return self.parameters


class Tool(_Value):
    """One tool a chat offers (only functions exist)."""

    type: Literal["function"] = "function"
    function: Function


class ToolChoice(_Value):
    """Whether the model may, must, or must not call a tool, or which one it must call."""

    mode: Literal["none", "auto", "required", "function"] = "auto"
    name: str | None = None  # the function it must call (mode `function`)
    parallel: bool = True  # whether an answer may make several calls (engines make at most one)

    @property
    def forced(self) -> bool:
        """Whether the answer must be a tool call."""
        return self.mode in ("required", "function")


class CallPart(_Value):
    """Which tool call a streamed piece of arguments belongs to: its place among the answer's
    calls, its id and the function's name."""

    index: int = Field(ge=0)
    id: str
    name: str


class ToolCall(_Value):
    """A call an answer makes: `arguments` is a JSON text (as the model produced it)."""

    id: str
    name: str
    arguments: str
