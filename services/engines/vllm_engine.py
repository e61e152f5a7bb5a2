"""The vLLM engine: a model served in-process by vLLM's async engine (`dim[vllm]`).

The only module that imports vllm, and only inside `VllmEngine.start`, so everything else —
including the pure parts below, which the unit tests cover — works without it. Written against
vLLM's documented async API (`AsyncEngineArgs`, `AsyncLLMEngine.from_engine_args`,
`generate(prompt, sampling_params, request_id)` yielding cumulative `RequestOutput`s, `abort`,
`check_health`, `get_tokenizer`, `shutdown`).

- Chat prompts go through the model's own chat template (`apply_chat_template`).
- vLLM yields the cumulative text of a request; `DeltaText` emits only what is new and holds back
  a trailing U+FFFD, which the detokenizer shows while a multi-byte character is incomplete.
- Capacity is `max_num_seqs`: the worker keeps that many requests in flight so the engine's
  continuous batch stays full.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from events.errors import EngineError
from events.inference import FinishReason, SamplingParams, Usage
from services.engines.protocol import Chunk, GenerationRequest, require_model
from services.settings import Settings

log = logging.getLogger(__name__)

_PENDING = "\ufffd"  # what a detokenizer shows for bytes of a character not yet complete


def engine_args(settings: Settings, model: str) -> dict[str, Any]:
    """`AsyncEngineArgs` keyword arguments from dim's settings (pure)."""
    args: dict[str, Any] = {
        "model": model,
        "dtype": settings.vllm_dtype,
        "tensor_parallel_size": settings.vllm_tensor_parallel_size,
        "pipeline_parallel_size": settings.vllm_pipeline_parallel_size,
        "gpu_memory_utilization": settings.vllm_gpu_memory_utilization,
        "max_num_seqs": settings.vllm_max_num_seqs or settings.capacity,
        "enable_prefix_caching": settings.vllm_enable_prefix_caching,
    }
    if settings.vllm_max_model_len is not None:
        args["max_model_len"] = settings.vllm_max_model_len
    if settings.vllm_quantization:
        args["quantization"] = settings.vllm_quantization
    if settings.model_cache_dir is not None:
        args["download_dir"] = str(settings.model_cache_dir)
    return args


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """vLLM `SamplingParams` keyword arguments for one task (pure).

    n is always 1: dim plans one task per requested choice, so choices spread over nodes.
    """
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
    }
    if params.stop:
        kwargs["stop"] = list(params.stop)
    if params.seed is not None:
        kwargs["seed"] = params.seed
    return kwargs


def finish_reason(reason: str | None, aborted: bool) -> FinishReason:
    """dim's finish reason for vLLM's (`stop`, `length`, `abort`, ...)."""
    if aborted or reason == "abort":
        return "abort"
    if reason == "length":
        return "length"
    return "stop"


class DeltaText:
    """Turns vLLM's cumulative text into deltas, never emitting half a character."""

    def __init__(self) -> None:
        self.sent = ""

    def step(self, cumulative: str, *, final: bool = False) -> str:
        """The text new since the last step (a trailing U+FFFD waits, unless `final`).

        Only the held-back tail is ever revised by the detokenizer, so what was sent stays a
        prefix of what comes next.
        """
        ready = cumulative if final else cumulative.rstrip(_PENDING)
        if not ready.startswith(self.sent):
            log.warning("vLLM revised text already streamed; continuing after it")
        new = ready[len(self.sent) :]
        if len(ready) > len(self.sent):
            self.sent = ready
        return new


class VllmEngine:
    """A model served in this process by vLLM."""

    kind = "vllm"

    def __init__(self, settings: Settings, model: str, aliases: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.model = model
        self._models = (model, *aliases)
        self._capacity = settings.vllm_max_num_seqs or settings.capacity
        self._engine: Any = None
        self._tokenizer: Any = None
        self._sampling: Any = None
        self._aborted: set[str] = set()
        self.max_context: int | None = settings.vllm_max_model_len
        self.cold_start_s = 0.0

    @property
    def models(self) -> tuple[str, ...]:
        """The model and its aliases."""
        return self._models

    @property
    def capacity(self) -> int:
        """`max_num_seqs`: sequences vLLM batches at once."""
        return self._capacity

    async def start(self) -> None:
        """Load the weights, build the engine, and warm it with one short generation."""
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine
            from vllm import SamplingParams as VllmSamplingParams
        except ImportError as exc:
            raise EngineError(
                "the vllm engine needs vLLM: pip install 'dim[vllm]' (on a machine with a GPU)",
                retriable=False,
            ) from exc
        t0 = time.monotonic()
        self._sampling = VllmSamplingParams
        self._engine = AsyncLLMEngine.from_engine_args(
            AsyncEngineArgs(**engine_args(self.settings, self.model))
        )
        tokenizer = self._engine.get_tokenizer()
        self._tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer
        config = getattr(self._engine, "model_config", None)
        self.max_context = getattr(config, "max_model_len", None) or self.max_context
        async for _ in self._engine.generate(
            "warm-up", VllmSamplingParams(max_tokens=1), "dim-warmup"
        ):
            pass
        self.cold_start_s = time.monotonic() - t0
        log.info("vLLM loaded %s in %.1fs", self.model, self.cold_start_s)

    async def check_health(self) -> None:
        """vLLM's own health check."""
        if self._engine is None:
            raise EngineError("the vLLM engine is not started")
        try:
            await self._engine.check_health()
        except Exception as exc:
            raise EngineError(f"vLLM is unhealthy: {exc!r}") from exc

    async def abort(self, request_id: str) -> None:
        """Abort in vLLM; the stream ends with finish reason ``abort``."""
        if self._engine is not None:
            self._aborted.add(request_id)
            await self._engine.abort(request_id)

    async def close(self) -> None:
        """Shut the engine (and its GPU workers) down."""
        if self._engine is not None:
            shutdown = getattr(self._engine, "shutdown", None)
            if shutdown is not None:
                shutdown()
            self._engine = None

    def _prompt(self, request: GenerationRequest) -> str:
        if request.prompt.messages is None:
            return (request.prompt.text or "") + request.resume
        messages = [m.model_dump() for m in request.prompt.messages]
        if request.resume:  # continue the partial answer inside the assistant's turn
            messages.append({"role": "assistant", "content": request.resume})
            return str(
                self._tokenizer.apply_chat_template(
                    messages, tokenize=False, continue_final_message=True
                )
            )
        return str(
            self._tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Stream one request's deltas; the last chunk has the finish reason and usage."""
        if self._engine is None:
            raise EngineError("the vLLM engine is not started")
        require_model(request, self._models)
        params = self._sampling(**sampling_kwargs(request.params))
        delta = DeltaText()
        tokens_seen = 0
        try:
            async for out in self._engine.generate(
                self._prompt(request), params, request.request_id
            ):
                completion = out.outputs[0]
                new = delta.step(completion.text, final=out.finished)
                count = len(completion.token_ids)
                if new or out.finished:
                    piece_tokens, tokens_seen = count - tokens_seen, count
                    if out.finished:
                        aborted = request.request_id in self._aborted
                        yield Chunk(
                            new,
                            piece_tokens,
                            finish_reason=finish_reason(completion.finish_reason, aborted),
                            usage=Usage(
                                prompt_tokens=len(out.prompt_token_ids or ()),
                                completion_tokens=count,
                            ),
                        )
                        return
                    yield Chunk(new, piece_tokens)
        except EngineError:
            raise
        except Exception as exc:
            if request.request_id in self._aborted:
                yield Chunk("", 0, finish_reason="abort", usage=Usage())
                return
            raise EngineError(f"vLLM failed the request: {exc!r}") from exc
        finally:
            self._aborted.discard(request.request_id)
