"""The OpenAI-upstream engine: dim in front of any OpenAI-compatible server.

`vllm serve`, Ollama, llama.cpp's server, TGI's Messages API, or another dim gateway: the worker
streams each task from the upstream's `/v1/chat/completions` (chat prompts) or
`/v1/completions` (text prompts) over a pool of keep-alive connections
(`services.engines.http_client`), and turns the SSE stream into engine chunks: one chunk per
read from the socket, however many tokens it carried (the tokens that came with the stream's
end ride on the last chunk). Usage comes from `stream_options.include_usage`; when the
upstream reports none it is estimated (about four characters a token) and marked
``estimated``. Upstream failures map to retriable task failures (cannot connect, timeouts,
408/429/5xx, events that are not JSON objects) or final ones (other 4xx). `abort` closes the
upstream connection, which ends the request there (the server sees the client go away); an
abort while the answer's headers are awaited closes it as soon as they arrive."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from events.capabilities import EVERY
from events.errors import EngineError
from events.inference import FinishReason, TokenLogprob, Usage
from services.engines import openai_wire as wire
from services.engines.http_client import ConnectionAborted, HttpClient, HttpError, Response
from services.engines.protocol import (
    Chunk,
    Embedded,
    GenerationRequest,
    estimate_tokens,
    require_model,
)
from services.engines.sse_parse import SSEParser

# What an OpenAI-compatible server is taken to do: every field is passed through, and an
# upstream that refuses one answers 400, which fails the task with its words
# (DIM_UPSTREAM_CAPABILITIES narrows it for servers that ignore fields instead).
CAPABILITIES = EVERY

log = logging.getLogger(__name__)

_FINISH: Mapping[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "eos": "stop",
    "eos_token": "stop",
    "stop_sequence": "stop",
    "content_filter": "stop",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "abort": "abort",
}


def request_body(request: GenerationRequest, upstream_model: str) -> tuple[str, dict[str, Any]]:
    """The upstream path and JSON body for one generation (pure)."""
    p = request.params
    body: dict[str, Any] = {
        "model": upstream_model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": p.max_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "n": 1,
    }
    if p.stop:
        body["stop"] = list(p.stop)
    if p.seed is not None:
        body["seed"] = p.seed
    if request.prompt.messages is not None:
        body["messages"] = [wire.message(m) for m in request.prompt.messages]
        if request.prompt.tools:
            body["tools"] = wire.tools(request.prompt)
        body.update(wire.chat_params(p))
        if request.resume:  # continue the partial answer (vLLM's chat extension)
            body["messages"].append({"role": "assistant", "content": request.resume})
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        return "/chat/completions", body
    body["prompt"] = (request.prompt.text or "") + request.resume
    body.update(wire.text_params(p))
    return "/completions", body


def classify(status: int, detail: str) -> EngineError:
    """An upstream HTTP error as a task failure: retriable (408, 429, 5xx) or final (other 4xx)."""
    retriable = status in (408, 409, 425, 429) or status >= 500
    kind = "engine_error" if retriable else "invalid_request"
    return EngineError(
        f"upstream answered {status}: {detail[:500]}", retriable=retriable, kind=kind
    )


def delta_of(event: Mapping[str, Any]) -> tuple[str, str | None]:
    """New text and finish reason of one streamed chunk (chat or text completion)."""
    choices = event.get("choices") or []
    if not choices:
        return "", None
    choice = choices[0]
    delta = choice.get("delta")
    text = (delta.get("content") or "") if isinstance(delta, dict) else (choice.get("text") or "")
    return text, choice.get("finish_reason")


def extras_of(
    event: Mapping[str, Any], calls: wire.CallsSoFar, fragments: list[tuple[int, str]]
) -> tuple[TokenLogprob, ...] | None:
    """One streamed chunk's logprobs; its tool-call fragments go into `calls`, and the new
    arguments into `fragments`."""
    choices = event.get("choices") or []
    if not choices or not isinstance(choices[0], Mapping):
        return None
    delta = choices[0].get("delta")
    if isinstance(delta, Mapping) and delta.get("tool_calls"):
        fragments += calls.add(delta["tool_calls"])
    return wire.logprobs_of(choices[0])


def _joined(fragments: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """One read's argument fragments, joined per call (in the order the calls came)."""
    by: dict[int, list[str]] = {}
    for i, text in fragments:
        by.setdefault(i, []).append(text)
    return [(i, "".join(texts)) for i, texts in by.items()]


def parse_events(datas: list[str]) -> list[Any]:
    """The JSON of several events' data: one parse for all of them (each `json.loads` call
    costs about as much again as the parsing itself; a stream's chunks are small)."""
    if len(datas) < 2:
        return [json.loads(d) for d in datas]
    try:
        events = json.loads("[" + ",".join(datas) + "]")
    except json.JSONDecodeError:
        events = None
    if events is None or len(events) != len(datas):
        return [json.loads(d) for d in datas]  # one of them is not JSON: raise for it
    return events  # type: ignore[no-any-return]


def _not_an_object(data: str) -> EngineError:
    """An SSE event whose data is not a JSON object (retriable: the upstream misbehaved)."""
    return EngineError(f"upstream event is not a JSON object: {data[:200]!r}")


class OpenAIUpstreamEngine:
    """Streams completions from an OpenAI-compatible HTTP server."""

    kind = "openai"

    def __init__(
        self,
        base_url: str,
        models: tuple[str, ...],
        *,
        api_key: str = "",
        capacity: int = 32,
        aliases: Mapping[str, str] | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 600.0,
        capabilities: tuple[str, ...] = CAPABILITIES,
    ) -> None:
        self._can = capabilities
        self.base_url = base_url.rstrip("/")
        self._models = models
        self._aliases = dict(aliases or {})  # name served in dim → name at the upstream
        self._capacity = capacity
        self._api_key = api_key
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._client: HttpClient | None = None
        # requests in flight (None until the answer's headers are in), and those aborted
        self._responses: dict[str, Response | None] = {}
        self._aborted: set[str] = set()
        self.upstream_models: tuple[str, ...] = ()
        self.max_context: int | None = None

    @property
    def models(self) -> tuple[str, ...]:
        """Models this worker serves (dim names; aliases map them to upstream names)."""
        return self._models

    @property
    def capacity(self) -> int:
        """Requests in flight at once (`DIM_CAPACITY`); also how many idle connections are kept."""
        return self._capacity

    def capabilities(self) -> dict[str, tuple[str, ...]]:
        """The same for every model it serves (`DIM_UPSTREAM_CAPABILITIES`)."""
        return dict.fromkeys(self._models, self._can)

    def _http(self) -> HttpClient:
        if self._client is None:
            headers = {"authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._client = HttpClient(
                self.base_url,
                headers=headers,
                connect_timeout_s=self._connect_timeout_s,
                read_timeout_s=self._read_timeout_s,
                max_idle=self._capacity,
            )
        return self._client

    async def start(self) -> None:
        """Reach the upstream and check it serves every model (the worker announces itself after)."""
        await self.check_health()
        missing = [m for m in self._models if self._aliases.get(m, m) not in self.upstream_models]
        if missing and self.upstream_models:
            raise EngineError(
                f"the upstream {self.base_url} does not serve {', '.join(missing)} "
                f"(it serves: {', '.join(self.upstream_models)}); "
                "set DIM_MODELS, or map names with DIM_UPSTREAM_ALIASES=dim-name=upstream-name",
                retriable=False,
            )

    async def _whole(
        self,
        method: str,
        path: str,
        failed: str,
        timeout_s: float | None,
        body: bytes | None = None,
    ) -> bytes:
        """A request answered whole (not streamed): its body, if the status is 200; else the
        upstream's error as a task failure (`failed`: what to say when it cannot be reached)."""
        try:
            r = await self._http().request(method, path, body, timeout_s=timeout_s)
            try:
                raw = await r.read()
            finally:
                r.release()
        except HttpError as exc:
            raise EngineError(f"{failed}: {exc!r}") from exc
        if r.status != 200:
            raise classify(r.status, raw.decode(errors="replace"))
        return raw

    async def check_health(self) -> None:
        """`GET /models` must answer 200; remembers which models the upstream lists."""
        # the connect timeout bounds the whole check: a health check must answer quickly
        raw = await self._whole(
            "GET", "/models", f"upstream {self.base_url} unreachable", self._connect_timeout_s
        )
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise EngineError(f"upstream {self.base_url}: GET /models is not JSON") from exc
        listed = [m for m in answer.get("data") or [] if isinstance(m, dict)]
        self.upstream_models = tuple(str(m.get("id")) for m in listed)
        # vLLM lists each model's context length; other servers leave it unknown
        lengths = [m["max_model_len"] for m in listed if isinstance(m.get("max_model_len"), int)]
        self.max_context = min(lengths) if lengths else None

    async def embed(self, request: GenerationRequest) -> Embedded:
        """The upstream's `/embeddings` for the inputs (floats asked for, so any server will do)."""
        require_model(request, self._models)
        body: dict[str, Any] = {
            "model": self._aliases.get(request.model, request.model),
            "input": list(request.prompt.texts or ()),
            "encoding_format": "float",
        }
        if request.params.dimensions is not None:
            body["dimensions"] = request.params.dimensions
        payload = json.dumps(body).encode()
        raw = await self._whole("POST", "/embeddings", "upstream embeddings failed", None, payload)
        try:
            answer = json.loads(raw)
            rows = sorted(answer["data"], key=lambda d: int(d.get("index", 0)))
            vectors = tuple(tuple(float(x) for x in row["embedding"]) for row in rows)
            tokens = int((answer.get("usage") or {}).get("prompt_tokens") or 0)
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineError(f"upstream embeddings answer is not OpenAI's: {exc!r}") from exc
        if len(vectors) != len(body["input"]):
            raise EngineError(f"upstream embedded {len(vectors)} of {len(body['input'])} inputs")
        return Embedded(vectors, tokens or estimate_tokens("\n".join(body["input"])))

    async def close(self) -> None:
        """Close every upstream stream and the connection pool."""
        for request_id in list(self._responses):
            await self.abort(request_id)
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def abort(self, request_id: str) -> None:
        """Close the upstream response of `request_id`: the upstream sees its client go away
        (at once, or as soon as the answer's headers arrive when they are still awaited)."""
        if request_id in self._responses:
            self._aborted.add(request_id)
            response = self._responses[request_id]
            if response is not None:
                response.abort()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Stream `request` from the upstream: one chunk per read, with every token it held."""
        require_model(request, self._models)
        path, body = request_body(request, self._aliases.get(request.model, request.model))
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        request_id = request.request_id
        parser = SSEParser()
        text: list[str] = []
        usage: Usage | None = None
        finish: FinishReason | None = None
        response: Response | None = None
        ended = False  # the answer was read to its end: its connection can serve another
        tail, tail_tokens = "", 0
        calls = wire.CallsSoFar()
        tail_lps: tuple[TokenLogprob, ...] | None = None
        self._responses[request_id] = None  # abortable from here, before the headers are in
        try:
            response = await self._http().request("POST", path, payload)
            self._responses[request_id] = response
            if request_id in self._aborted:  # aborted while the headers were awaited
                raise ConnectionAborted("aborted before the answer's headers")  # closed below
            if response.status != 200:
                detail = (await response.read()).decode(errors="replace")
                ended = True
                raise classify(response.status, detail)
            while not ended:
                raw = await response.receive()
                if not raw:
                    ended = True
                    break
                datas = parser.feed(raw)
                if "[DONE]" in datas:
                    ended = True
                    datas = datas[: datas.index("[DONE]")]  # anything after it is not read
                pieces: list[str] = []
                fragments: list[tuple[int, str]] = []
                read_lps: list[TokenLogprob] | None = None
                events = parse_events(datas)
                for event in events:
                    if not isinstance(event, dict):
                        # only dicts come before it, and no dict equals it: its index is its own
                        raise _not_an_object(datas[events.index(event)])
                    if "error" in event and not event.get("choices"):
                        err = event["error"]
                        detail = err.get("message", str(err)) if isinstance(err, dict) else err
                        raise EngineError(f"upstream error mid-stream: {detail}")
                    if event.get("usage"):
                        u = event["usage"]
                        usage = Usage(
                            prompt_tokens=int(u.get("prompt_tokens") or 0),
                            completion_tokens=int(u.get("completion_tokens") or 0),
                        )
                    piece, reason = delta_of(event)
                    if piece:
                        pieces.append(piece)
                    got = extras_of(event, calls, fragments)
                    if got:
                        read_lps = [*(read_lps or ()), *got]
                    if reason is not None:
                        finish = _FINISH.get(reason, "stop")
                if pieces:
                    # Tokens that arrived together go on together: one chunk per read (the
                    # worker would coalesce them into one message anyway); those that came
                    # with the stream's end ride on the last chunk.
                    joined = pieces[0] if len(pieces) == 1 else "".join(pieces)
                    text.append(joined)
                    got_lps = tuple(read_lps) if read_lps is not None else None
                    if ended:
                        tail, tail_tokens, tail_lps = joined, len(pieces), got_lps
                    else:
                        yield Chunk(joined, len(pieces), logprobs=got_lps)
                for i, arguments in _joined(fragments):  # a call's arguments as they come
                    part = calls.part(i)
                    if part is not None:
                        yield Chunk(arguments, 1, call=part)
        except EngineError:
            raise
        except json.JSONDecodeError as exc:
            raise _not_an_object(exc.doc) from exc
        except HttpError as exc:
            if request_id not in self._aborted:
                raise EngineError(f"upstream stream failed: {exc!r}") from exc
        finally:
            self._responses.pop(request_id, None)
            aborted = request_id in self._aborted
            self._aborted.discard(request_id)  # also when the stream is closed at a yield
            if response is not None:
                if ended:
                    response.release()  # kept alive for the next request
                else:
                    response.abort()  # stopped early: the upstream sees its client go
        if aborted:
            finish = "abort"
        if finish is None:
            raise EngineError("the upstream ended the stream without a finish reason")
        if usage is None:
            usage = Usage(
                prompt_tokens=estimate_tokens(request.prompt.render()),
                completion_tokens=estimate_tokens("".join(text)),
                estimated=True,
            )
        yield Chunk(
            tail,
            tail_tokens,
            finish_reason=finish,
            usage=usage,
            logprobs=tail_lps,
            tool_calls=calls.calls(),
        )
