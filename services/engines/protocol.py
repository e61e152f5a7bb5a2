"""The narrow engine protocol every backend implements (after vLLM's ``EngineClient``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from events.capabilities import BASIC, needs
from events.errors import EngineError
from events.inference import FinishReason, Prompt, SamplingParams, TokenLogprob, Usage
from events.tools import CallPart, ToolCall


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One generation: a request id unique among the engine's in-flight requests.

    `resume` is output an earlier attempt already produced (a worker died mid-generation): the
    engine continues the answer from prompt + `resume`, yields only the new text, and counts
    only the new tokens; `params.max_tokens` is the budget left. `resume_token_ids`, when the
    earlier attempt's engine reported them, are `resume`'s exact tokens: an engine that takes
    token ids continues from them, so the answer is the one an uninterrupted run would give.
    """

    request_id: str
    model: str
    prompt: Prompt
    params: SamplingParams
    resume: str = ""
    resume_token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """New text since the previous chunk; the last chunk has `finish_reason` and `usage`.

    `token_ids`, from engines that know them, are the ids of exactly the tokens whose text is
    `text` (so `len(token_ids) == tokens`); `logprobs` (when the request asks) one per token.
    The last chunk of an answer that calls tools has them whole in `tool_calls` (finish reason
    ``tool_calls``); engines that can stream a call's arguments as they are made send them
    before, in chunks whose `call` names the call (never as the answer's text).
    """

    text: str
    tokens: int
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    token_ids: tuple[int, ...] | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    call: CallPart | None = None  # `text` is arguments of this call, streamed as they come


@dataclass(frozen=True, slots=True)
class Embedded:
    """The vectors of an embeddings request, one per input, and the tokens the inputs took."""

    vectors: tuple[tuple[float, ...], ...]
    prompt_tokens: int


def require_model(request: GenerationRequest, models: tuple[str, ...]) -> None:
    """Refuse (final, `invalid_request`) a request for a model the engine does not serve."""
    if request.model not in models:
        raise EngineError(
            f"model {request.model!r} is not served here (serving {', '.join(models)})",
            retriable=False,
            kind="invalid_request",
        )


def require_capabilities(request: GenerationRequest, can: frozenset[str], engine: str) -> None:
    """Refuse (final, `invalid_request`) a request that asks for what the engine cannot do:
    never answer as if a field had not been sent."""
    for field, capability in needs(request.prompt, request.params):
        if capability not in can:
            raise EngineError(
                f"{field}: the {engine} engine does not serve {capability} for {request.model!r}",
                retriable=False,
                kind="invalid_request",
            )


def basic_capabilities(models: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Plain chat and completions for each model."""
    return dict.fromkeys(models, BASIC)


@runtime_checkable
class Engine(Protocol):
    """What a worker needs of an inference engine."""

    @property
    def kind(self) -> str:
        """Short name of the backend, e.g. ``simulated``."""
        ...

    @property
    def models(self) -> tuple[str, ...]:
        """Models this engine serves."""
        ...

    @property
    def capacity(self) -> int:
        """Requests the engine can batch at once; the worker keeps this many in flight."""
        ...

    def capabilities(self) -> dict[str, tuple[str, ...]]:
        """What it does per model (events/capabilities.py), once started."""
        ...

    async def start(self) -> None:
        """Load and warm the model(s); return when ready to serve."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Stream the completion of `request`; raises `EngineError` on failure."""
        ...

    async def embed(self, request: GenerationRequest) -> Embedded:
        """The vectors of `request.prompt.texts` (an engine that cannot, where its capabilities
        say so, raises `EngineError`)."""
        ...

    async def abort(self, request_id: str) -> None:
        """Stop an in-flight request; its stream ends with finish reason ``abort``."""
        ...

    async def check_health(self) -> None:
        """Raise `EngineError` if the engine cannot serve."""
        ...

    async def close(self) -> None:
        """Release the engine's resources."""
        ...


def estimate_tokens(text: str) -> int:
    """A token estimate where no tokenizer says: ~4 characters per token."""
    return max(1, round(len(text) / 4)) if text else 0
