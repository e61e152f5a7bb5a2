"""A zero-latency OpenAI-shaped server: the upstream of the gateway bench's openai-engine row.

Not part of dim. It answers instantly, so what the bench measures is dim's upstream path, not
a model: `GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions`, whole
answers (`Content-Length`) or streamed (SSE over chunked transfer encoding, one event per
token, the finish reason in its own event, a usage event when `stream_options.include_usage`
asks for it, then `[DONE]`), with HTTP/1.1 keep-alive. It is a raw asyncio protocol over
httptools' C parser on uvloop, with the answers' JSON written from templates, so it costs a
small fraction of what the path it serves costs and is never the bottleneck.

    python -m tests.bench.mock_upstream PORT [--models a,b]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import time
from typing import Any, cast

import httptools

from services.cpu_policy import use_batch_policy
from services.process import run
from services.settings import Settings

WORDS = (" the", " mesh", " streams", " tokens", " from", " every", " node", " to", " the", " door")
_ids = itertools.count()


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def tokens_of(max_tokens: int) -> list[str]:
    """The answer's tokens: `max_tokens` words (the mock always runs to its length)."""
    return [WORDS[i % len(WORDS)] for i in range(max_tokens)]


# What changes per answer is written over fixed-width placeholders in a cached template: JSON
# text never holds a raw control character, so these bytes occur nowhere else.
_ID, _CREATED = b"\x00" * 12, b"\x01" * 10


def answer(path: str, request: dict[str, Any]) -> tuple[bytes, str]:
    """The body and content type answering one completion request."""
    options = request.get("stream_options") or {}
    body, content_type = _template(
        path.endswith("/chat/completions"),
        str(request.get("model") or "mock"),
        int(request.get("max_tokens") or 16),
        bool(request.get("stream")),
        bool(options.get("include_usage")),
    )
    body = body.replace(_ID, b"%012d" % next(_ids)).replace(_CREATED, b"%010d" % time.time())
    return body, content_type


@functools.lru_cache(maxsize=256)
def _template(
    chat: bool, model_name: str, max_tokens: int, stream: bool, include_usage: bool
) -> tuple[bytes, str]:
    model = _json(model_name)
    tokens = tokens_of(max_tokens)
    prompt_tokens = 8
    usage = (
        f'{{"prompt_tokens":{prompt_tokens},"completion_tokens":{max_tokens},'
        f'"total_tokens":{prompt_tokens + max_tokens}}}'
    )
    rid, created = f"cmpl-{_ID.decode()}", _CREATED.decode()
    if not stream:
        text = _json("".join(tokens))
        if chat:
            obj, choice = "chat.completion", f'"message":{{"role":"assistant","content":{text}}}'
        else:
            obj, choice = "text_completion", f'"text":{text}'
        body = (
            f'{{"id":"{rid}","object":"{obj}","created":{created},"model":{model},'
            f'"choices":[{{"index":0,{choice},"finish_reason":"length"}}],"usage":{usage}}}'
        )
        return body.encode(), "application/json"
    obj = "chat.completion.chunk" if chat else "text_completion"
    head = f'data: {{"id":"{rid}","object":"{obj}","created":{created},"model":{model},'
    events: list[str] = []
    for token in tokens:
        piece = f'"delta":{{"content":{_json(token)}}}' if chat else f'"text":{_json(token)}'
        events.append(f'{head}"choices":[{{"index":0,{piece},"finish_reason":null}}]}}\n\n')
    last = '"delta":{}' if chat else '"text":""'
    events.append(f'{head}"choices":[{{"index":0,{last},"finish_reason":"length"}}]}}\n\n')
    if include_usage:
        events.append(f'{head}"choices":[],"usage":{usage}}}\n\n')
    events.append("data: [DONE]\n\n")
    # One HTTP chunk per event, as streaming servers write them, all in one write.
    framed = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in (x.encode() for x in events))
    return framed + b"0\r\n\r\n", "text/event-stream"


class MockProtocol(asyncio.Protocol):
    """One client connection: HTTP/1.1 requests in, instant answers out."""

    def __init__(self, models: bytes) -> None:
        self._models = models
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._respond(400, b'{"error":{"message":"bad request"}}', "application/json")
            assert self._transport is not None
            self._transport.close()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        path = self._url.split(b"?", 1)[0].decode()
        method = self._parser.get_method()
        body, self._url, self._body = b"".join(self._body), b"", []
        if method == b"GET" and path == "/v1/models":
            self._respond(200, self._models, "application/json")
        elif method == b"POST" and path in ("/v1/chat/completions", "/v1/completions"):
            try:
                request = json.loads(body)
            except ValueError:
                self._respond(400, b'{"error":{"message":"invalid JSON"}}', "application/json")
                return
            self._respond(200, *answer(path, request))
        else:
            self._respond(404, b'{"error":{"message":"not found"}}', "application/json")
        if not self._parser.should_keep_alive() and self._transport is not None:
            self._transport.close()

    def _respond(self, status: int, body: bytes, content_type: str) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
        if content_type == "text/event-stream":
            framing = "transfer-encoding: chunked\r\ncache-control: no-cache"
        else:
            framing = f"content-length: {len(body)}"
        head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n{framing}\r\n\r\n"
        self._transport.write(head.encode() + body)


def models_body(models: list[str]) -> bytes:
    """The `GET /v1/models` answer."""
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "mock"} for m in models]
    return _json({"object": "list", "data": data}).encode()


async def serve(port: int, models: list[str]) -> None:
    """Serve on 127.0.0.1:`port` until killed."""
    loop = asyncio.get_running_loop()
    listing = models_body(models)
    server = await loop.create_server(lambda: MockProtocol(listing), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    """Parse flags and serve."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("port", type=int)
    p.add_argument("--models", default="mock-small", help="models GET /v1/models lists")
    args = p.parse_args()
    use_batch_policy(Settings().sched_batch)  # the CPU policy of dim's own processes
    run(serve(args.port, [m for m in args.models.split(",") if m]))


if __name__ == "__main__":
    main()
