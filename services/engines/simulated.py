"""The simulated engine: deterministic text with realistic timing, for machines without a GPU.

It is a real engine, not a test double: `dim up` runs it so the whole mesh works on a laptop,
and load tests use it at zero delay. Output is a pure function of (model, prompt, seed): the
same request always produces the same text, which makes failover and replay checkable.

Knobs (all from settings, ``DIM_SIM_*``): time to first token, decode speed (0 = no delay),
an error rate and a hang rate (decided per request id, deterministically) for fault tests.
Tokens are words: a prompt's token count is its number of words and punctuation marks.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import re
import time
from collections.abc import AsyncIterator

from events.capabilities import EVERY
from events.errors import EngineError
from events.inference import FinishReason, Prompt, SamplingParams, TokenLogprob, Usage
from events.tools import CallPart
from services.engines.protocol import (
    Chunk,
    Embedded,
    GenerationRequest,
    require_capabilities,
    require_model,
)
from services.engines.sim_answers import answer
from services.engines.stops import StopMatcher

# What it can do for each model it serves (events/capabilities.py); DIM_SIM_CAPABILITIES narrows
# it, e.g. to try routing in a mesh where only some nodes can honour a field.
CAPABILITIES = EVERY
DIMENSIONS = 256  # its embeddings' native size; `dimensions` shortens them (and renormalizes)

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """The simulated tokenizer: words and punctuation marks."""
    return len(_TOKEN.findall(text))


def unit_vector(model: str, text: str, seed: int, dims: int) -> tuple[float, ...]:
    """The simulated embedding of `text`: its first `dims` values, renormalized."""
    digest = hashlib.blake2b(f"{model}\x00{seed}\x00{text}".encode(), digest_size=16).digest()
    rng = random.Random(digest)
    values = [rng.gauss(0.0, 1.0) for _ in range(DIMENSIONS)][:dims]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return tuple(v / norm for v in values)


def simulated_tokens(model: str, prompt: str, seed: int) -> list[str]:
    """The full natural completion (before max_tokens and stops) of a plain text prompt."""
    return answer(model, Prompt(text=prompt), SamplingParams(), seed).tokens


class SimulatedEngine:
    """Deterministic generation with configurable latency and failure knobs."""

    kind = "simulated"

    def __init__(
        self,
        models: tuple[str, ...],
        *,
        capacity: int = 32,
        ttft_ms: float = 30.0,
        tokens_per_s: float = 80.0,
        error_rate: float = 0.0,
        hang_rate: float = 0.0,
        crash_rate: float = 0.0,
        seed: int = 0,
        max_context: int = 32_768,
        capabilities: tuple[str, ...] = CAPABILITIES,
    ) -> None:
        self._models = models
        self._can = capabilities
        self.max_context = max_context
        self._capacity = capacity
        self.ttft_s = ttft_ms / 1000
        self.token_s = 1 / tokens_per_s if tokens_per_s > 0 else 0.0
        self.error_rate = error_rate
        self.hang_rate = hang_rate
        self.crash_rate = crash_rate
        self.seed = seed
        self._aborted: set[str] = set()
        self._running: set[str] = set()

    @property
    def models(self) -> tuple[str, ...]:
        """Models this engine answers for."""
        return self._models

    @property
    def capacity(self) -> int:
        """Concurrent requests it accepts."""
        return self._capacity

    def capabilities(self) -> dict[str, tuple[str, ...]]:
        """The same for every model it serves."""
        return dict.fromkeys(self._models, self._can)

    async def start(self) -> None:
        """Nothing to load."""

    async def check_health(self) -> None:
        """Always healthy."""

    async def close(self) -> None:
        """Abort whatever runs."""
        self._aborted |= self._running

    async def abort(self, request_id: str) -> None:
        """End `request_id` at its next token with finish reason ``abort``."""
        if request_id in self._running:
            self._aborted.add(request_id)

    async def embed(self, request: GenerationRequest) -> Embedded:
        """Deterministic unit vectors, one per input: a function of (model, text, seed)."""
        require_model(request, self._models)
        dims = request.params.dimensions or DIMENSIONS
        if dims > DIMENSIONS:
            raise EngineError(
                f"dimensions: {request.model!r} makes vectors of {DIMENSIONS} (ask for fewer)",
                retriable=False,
                kind="invalid_request",
            )
        if self.ttft_s:
            await asyncio.sleep(self.ttft_s)
        texts = request.prompt.texts or ()
        return Embedded(
            tuple(unit_vector(request.model, t, self.seed, dims) for t in texts),
            sum(count_tokens(t) for t in texts),
        )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Stream the deterministic completion of `request`."""
        require_model(request, self._models)
        require_capabilities(request, frozenset(self._can), self.kind)
        fate = random.Random(f"{self.seed}:{request.request_id}").random()
        prompt = request.prompt.render()
        seed = self.seed if request.params.seed is None else request.params.seed
        planned = answer(request.model, request.prompt, request.params, seed)
        tokens, lps, call = planned.tokens, planned.logprobs, planned.tool_call
        part = CallPart(index=0, id=call.id, name=call.name) if call is not None else None
        usage_prompt = count_tokens(prompt) + sum(
            count_tokens(t.model_dump_json()) for t in request.prompt.tools
        )
        stops = StopMatcher(request.params.stop)
        self._running.add(request.request_id)
        start = time.monotonic()
        try:
            if self.ttft_s:
                await asyncio.sleep(self.ttft_s)
            if fate < self.error_rate:
                raise EngineError("simulated engine failure (DIM_SIM_ERROR_RATE)", retriable=True)
            if 1 - fate <= self.crash_rate:  # an engine bug: not an EngineError, nothing reported
                raise RuntimeError("simulated engine crash (DIM_SIM_CRASH_RATE)")
            if fate < self.error_rate + self.hang_rate:
                while request.request_id not in self._aborted:
                    await asyncio.sleep(0.05)
            finish: FinishReason = "stop"
            produced = held = 0
            held_lps: list[TokenLogprob] = []
            skip, done = 0, 0  # a resumed answer: its first tokens were produced before
            while request.resume and skip < len(tokens) and done < len(request.resume):
                done += len(tokens[skip])
                skip += 1
            for i, token in enumerate(tokens[skip:], start=skip):
                if request.request_id in self._aborted:
                    finish = "abort"
                    break
                if produced >= request.params.max_tokens:
                    finish = "length"
                    break
                if self.token_s and i > skip:
                    # Pace against the clock so per-token sleep overhead does not slow decoding.
                    lag = start + self.ttft_s + (i - skip) * self.token_s - time.monotonic()
                    if lag > 0:
                        await asyncio.sleep(lag)
                elif i > skip and i % 64 == 0:
                    await asyncio.sleep(0)
                produced += 1
                if part is not None:  # a tool's arguments: streamed as the call's, not as text
                    yield Chunk(token, 1, call=part)
                    continue
                held += 1
                if lps is not None:
                    held_lps.append(lps[i])
                text = stops.feed(token)
                if text:
                    yield Chunk(text, held, logprobs=tuple(held_lps) if lps else None)
                    held, held_lps = 0, []
                if stops.stopped:
                    break
            usage = Usage(prompt_tokens=usage_prompt, completion_tokens=produced)
            if call is not None:
                args = "".join(tokens[:produced])
                if finish == "stop":
                    finish = "tool_calls"
                yield Chunk(
                    "",
                    0,
                    finish,
                    usage,
                    tool_calls=(call.model_copy(update={"arguments": args}),),
                )
                return
            tail = stops.flush() if finish != "abort" else ""
            yield Chunk(tail, held, finish, usage, logprobs=tuple(held_lps) if lps else None)
        finally:
            self._running.discard(request.request_id)
            self._aborted.discard(request.request_id)
