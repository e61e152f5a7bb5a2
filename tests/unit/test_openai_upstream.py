"""The OpenAI-upstream engine against scripted local servers: SSE as real servers write it
(keep-alives, CRLF and CR, frames split anywhere, multi-line data), usage reported or
estimated, errors by status and mid-stream (events that are not JSON objects), timeouts, abort
(also before the headers), health, aliases, the API key."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest

from events.errors import EngineError
from events.inference import ChatMessage, ImageRef, Prompt, ResponseFormat, SamplingParams
from events.tools import Function, Tool, ToolCall, ToolChoice
from services.engines.openai_upstream import OpenAIUpstreamEngine, parse_events
from services.engines.openai_wire import logprobs_of, text_params
from services.engines.protocol import Chunk, GenerationRequest
from tests.unit.scripted_server import Server

CHAT = Prompt(messages=(ChatMessage(role="user", content="hi"),))
MODELS = b'{"object":"list","data":[{"id":"up-model","max_model_len":4096},{"id":"other"}]}'


def sse(*events: str, usage: bool = True, sep: str = "\n") -> bytes:
    """A chat stream: one event per token, the finish, the usage, [DONE]."""
    out = [f": keep-alive{sep}{sep}"]
    for text in events:
        chunk = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        out.append(f"data: {json.dumps(chunk, ensure_ascii=False)}{sep}{sep}")
    out.append(
        'data: {"choices":[{"index":0,"delta":{},\n'  # one event over two data lines
        f'data: "finish_reason":"length"}}]}}{sep}{sep}'
    )
    if usage:
        out.append(
            f'data: {{"choices":[],"usage":{{"prompt_tokens":3,"completion_tokens":{len(events)}}}}}'
            f"{sep}{sep}"
        )
    out.append(f"data: [DONE]{sep}{sep}")
    return "".join(out).encode()


def chunked_head() -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )


def frame(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def answer(status: int, body: bytes) -> bytes:
    return f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body


async def models_or(
    server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bytes:
    """Answer `GET /models` requests; return the first other request (b"" at the end)."""
    while request := await server.read_request(reader):
        if not request.startswith(b"GET /v1/models "):
            return request
        writer.write(answer(200, MODELS))
    return b""


def engine_for(server: Server, **kw: object) -> OpenAIUpstreamEngine:
    return OpenAIUpstreamEngine(
        server.url(),
        ("small",),
        aliases={"small": "up-model"},
        api_key="secret",
        **kw,  # type: ignore[arg-type]
    )


async def run(engine: OpenAIUpstreamEngine, rid: str = "r1", **params: object) -> list[Chunk]:
    request = GenerationRequest(rid, "small", CHAT, SamplingParams(**params))  # type: ignore[arg-type]
    return [c async for c in engine.generate(request)]


@contextlib.asynccontextmanager
async def engine_at(server: Server, **kw: object) -> AsyncIterator[OpenAIUpstreamEngine]:
    """An engine in front of `server`, closed before the server stops."""
    engine = engine_for(server, **kw)
    try:
        yield engine
    finally:
        await engine.close()
        await asyncio.sleep(0)


@pytest.mark.parametrize("sep", ["\n", "\r\n", "\r"])
async def test_a_stream_split_anywhere_gives_the_text_usage_and_finish(
    sep: str,
) -> None:
    body = sse("h", "é", " wörld", sep=sep)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await models_or(server, reader, writer):
            writer.write(chunked_head())
            for i in range(0, len(body), 5):  # 5-byte frames: splits lines, CRLFs and UTF-8
                writer.write(frame(body[i : i + 5]))
                await writer.drain()
                await asyncio.sleep(0)
            writer.write(b"0\r\n\r\n")

    async with Server(handler) as server, engine_at(server) as engine:
        await engine.start()
        assert engine.max_context == 4096
        chunks = await run(engine, max_tokens=9, seed=2)
        assert "".join(c.text for c in chunks) == "hé wörld"
        assert sum(c.tokens for c in chunks) == 3
        last = chunks[-1]
        assert last.finish_reason == "length" and last.usage is not None
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 3)
        assert not last.usage.estimated
        await asyncio.sleep(0.05)  # the chunked body's end, after [DONE], is drained meanwhile
        assert await run(engine, "r2")  # by the same connection
        assert server.connections == 1
        head, _, payload = server.requests[1].partition(b"\r\n\r\n")
        assert b"authorization: Bearer secret" in head.split(b"\r\n")
        assert head.startswith(b"POST /v1/chat/completions HTTP/1.1")
        sent = json.loads(payload)
        assert sent["model"] == "up-model" and sent["seed"] == 2 and sent["max_tokens"] == 9
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_tokens_that_arrive_together_are_one_chunk() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await models_or(server, reader, writer):
            writer.write(chunked_head() + frame(sse("a", "b", "c")) + b"0\r\n\r\n")

    async with Server(handler) as server, engine_at(server) as engine:
        chunks = await run(engine)  # the stream's end came with them: the last chunk
        assert [(c.text, c.tokens, c.finish_reason) for c in chunks] == [("abc", 3, "length")]


async def test_without_usage_it_is_estimated_and_marked() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await models_or(server, reader, writer):
            body = sse("abcd", "efgh", usage=False)
            # no Content-Length, no chunked: the answer ends with the connection
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n" + body)
            return

    async with Server(handler) as server, engine_at(server) as engine:
        last = (await run(engine))[-1]
        assert last.usage is not None and last.usage.estimated
        assert last.usage.completion_tokens == 2


@pytest.mark.parametrize(("status", "retriable"), [(503, True), (429, True), (400, False)])
async def test_error_statuses_are_retriable_or_final(status: int, retriable: bool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await models_or(server, reader, writer):
            writer.write(answer(status, b'{"error":{"message":"nope"}}'))

    async with Server(handler) as server, engine_at(server) as engine:
        for _ in range(2):
            with pytest.raises(EngineError, match=f"upstream answered {status}") as err:
                await run(engine)
            assert err.value.retriable is retriable
        assert server.connections == 1  # an error answer read whole keeps its connection


async def test_an_error_event_mid_stream_fails_the_request() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await models_or(server, reader, writer):
            event = b'data: {"error":{"message":"out of memory"}}\n\n'
            writer.write(chunked_head() + frame(event))
            await reader.read()

    async with Server(handler) as server, engine_at(server) as engine:
        with pytest.raises(EngineError, match="out of memory"):
            await run(engine)


async def test_a_stream_without_a_finish_reason_fails() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await models_or(server, reader, writer):
            body = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\ndata: [DONE]\n\n'
            writer.write(chunked_head() + frame(body) + b"0\r\n\r\n")

    async with Server(handler) as server, engine_at(server) as engine:
        with pytest.raises(EngineError, match="without a finish reason"):
            await run(engine)


async def test_silence_past_the_read_timeout_is_a_retriable_failure() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await models_or(server, reader, writer):
            writer.write(
                chunked_head() + frame(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n')
            )
            await reader.read()

    async with Server(handler) as server, engine_at(server, read_timeout_s=0.2) as engine:
        with pytest.raises(EngineError, match="ReadTimeout") as err:
            await run(engine)
        assert err.value.retriable


async def test_abort_ends_the_stream_and_the_upstream_sees_its_client_go() -> None:
    gone = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await models_or(server, reader, writer):
            writer.write(chunked_head())
            while True:  # a token every 10 ms until the client goes
                writer.write(frame(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'))
                try:
                    await writer.drain()
                    if await asyncio.wait_for(reader.read(1), 0.01) == b"":
                        break
                except TimeoutError:
                    continue
                except ConnectionError:
                    break
            gone.set()
            return

    async with Server(handler) as server, engine_at(server) as engine:
        request = GenerationRequest("r1", "small", CHAT, SamplingParams())
        chunks = []
        async for chunk in engine.generate(request):
            chunks.append(chunk)
            if len(chunks) == 3:
                await engine.abort("r1")
        assert chunks[-1].finish_reason == "abort"
        await asyncio.wait_for(gone.wait(), 2)


async def test_an_abort_while_the_headers_are_awaited_ends_the_stream_with_abort() -> None:
    gone = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await models_or(server, reader, writer):
            await asyncio.sleep(0.2)  # the headers come after the abort
            writer.write(chunked_head() + frame(sse("a", "b")) + b"0\r\n\r\n")
            if await reader.read(1) == b"":
                gone.set()
            return

    async with Server(handler) as server, engine_at(server) as engine:
        running = asyncio.ensure_future(run(engine))
        await asyncio.sleep(0.05)
        await engine.abort("r1")
        chunks = await running
        assert [(c.text, c.tokens, c.finish_reason) for c in chunks] == [("", 0, "abort")]
        await asyncio.wait_for(gone.wait(), 2)
        assert not engine._aborted and not engine._responses


async def test_a_stream_closed_at_a_yield_after_an_abort_forgets_the_request() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await models_or(server, reader, writer):
            writer.write(chunked_head())
            writer.write(frame(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'))
            await reader.read()

    async with Server(handler) as server, engine_at(server) as engine:
        request = GenerationRequest("r1", "small", CHAT, SamplingParams())
        stream = engine.generate(request)
        assert (await anext(stream)).text == "x"
        await engine.abort("r1")  # the worker's task timeout: abort, then the stream is closed
        await stream.aclose()
        assert not engine._aborted and not engine._responses


@pytest.mark.parametrize("data", [b'"ping"', b"1", b"[]", b""])
async def test_an_event_that_is_not_a_json_object_is_a_retriable_failure(data: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await models_or(server, reader, writer):
            event = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata:' + data + b"\n\n"
            writer.write(chunked_head() + frame(event))
            await reader.read()

    async with Server(handler) as server, engine_at(server) as engine:
        with pytest.raises(EngineError, match="not a JSON object") as err:
            await run(engine)
        assert err.value.retriable and data.decode() in str(err.value)


async def test_health_lists_the_upstreams_models_and_start_checks_them() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await models_or(server, reader, writer)

    async with Server(handler) as server, engine_at(server) as engine:
        await engine.check_health()
        assert engine.upstream_models == ("up-model", "other")
        missing = OpenAIUpstreamEngine(server.url(), ("absent",))
        with pytest.raises(EngineError, match="does not serve absent") as err:
            await missing.start()
        await missing.close()
        assert not err.value.retriable
        assert b"authorization: Bearer secret" in server.requests[0]


async def test_an_unreachable_upstream_is_a_retriable_failure() -> None:
    async with Server(lambda r, w: asyncio.sleep(0)) as server:
        port = server.port
    engine = OpenAIUpstreamEngine(f"http://127.0.0.1:{port}/v1", ("small",), connect_timeout_s=1)
    with pytest.raises(EngineError, match="unreachable"):
        await engine.check_health()
    with pytest.raises(EngineError, match="upstream stream failed") as err:
        await run(engine)
    assert err.value.retriable
    await engine.close()


def test_events_of_one_read_are_parsed_together_and_a_bad_one_still_fails() -> None:
    assert parse_events(['{"a":1}', '{"b":[2]}', "3"]) == [{"a": 1}, {"b": [2]}, 3]
    assert parse_events(['{"a":1}']) == [{"a": 1}] and parse_events([]) == []
    for bad in (['{"a":1}', "{oops"], ["1, 2", "3"], ['{"a":1}', ""]):
        with pytest.raises(json.JSONDecodeError):
            parse_events(bad)


async def test_tools_and_fields_pass_through_and_tool_calls_come_back() -> None:
    """Every field goes to the upstream as OpenAI names it; a `tool_calls` answer streamed in
    fragments comes back as the calls (finish reason `tool_calls`), with the logprobs."""
    lp = {"token": "ok", "logprob": -0.5, "bytes": [111, 107], "top_logprobs": []}
    events = [
        {"choices": [{"index": 0, "delta": {"content": "ok"}, "logprobs": {"content": [lp]}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": ""},
                            }
                        ]
                    },
                }
            ]
        },
        *(
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {"tool_calls": [{"index": 0, "function": {"arguments": part}}]},
                    }
                ]
            }
            for part in ('{"ci', 'ty": "Paris"}')
        ),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await models_or(server, reader, writer):
            writer.write(chunked_head() + frame(body.encode()) + b"0\r\n\r\n")

    tool = Tool(function=Function(name="get_weather", parameters={"type": "object"}))
    prompt = Prompt(
        messages=(
            ChatMessage(
                role="user",
                content="look",
                images=(ImageRef(url="https://example.org/a.png", detail="low"),),
            ),
            ChatMessage(
                role="assistant",
                content="",
                tool_calls=(ToolCall(id="c0", name="get_weather", arguments="{}"),),
            ),
            ChatMessage(role="tool", content="rain", tool_call_id="c0"),
        ),
        tools=(tool,),
    )
    params = SamplingParams(
        logprobs=True,
        top_logprobs=2,
        presence_penalty=0.5,
        logit_bias={7: -100},
        tool_choice=ToolChoice(mode="function", name="get_weather", parallel=False),
        response_format=ResponseFormat(type="json_schema", json_schema={"type": "object"}),
    )
    async with Server(handler) as server, engine_at(server) as engine:
        request = GenerationRequest("r1", "small", prompt, params)
        chunks = [c async for c in engine.generate(request)]
        sent = json.loads(server.requests[-1].partition(b"\r\n\r\n")[2])
    assert sent["tools"] == [
        {"type": "function", "function": tool.function.model_dump(exclude_none=True)}
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False
    assert (sent["logprobs"], sent["top_logprobs"]) == (True, 2)
    assert sent["presence_penalty"] == 0.5 and sent["logit_bias"] == {"7": -100}
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["messages"][0]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "https://example.org/a.png", "detail": "low"},
    }
    assert sent["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent["messages"][1]["content"] is None
    assert sent["messages"][2] == {"role": "tool", "content": "rain", "tool_call_id": "c0"}
    streamed = [c for c in chunks if c.call is not None]
    assert [c.call.id for c in streamed if c.call] == ["call_1"] * len(streamed)
    assert "".join(c.text for c in streamed) == '{"city": "Paris"}'
    assert "".join(c.text for c in chunks if c.call is None) == "ok"  # the answer's text alone
    last = chunks[-1]
    assert last.finish_reason == "tool_calls"
    assert last.tool_calls == (
        ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}'),
    )
    lps = [t for c in chunks for t in c.logprobs or ()]
    assert [(t.token, t.logprob) for t in lps] == [("ok", -0.5)]


def test_legacy_completion_logprobs_are_read() -> None:
    choice = {
        "logprobs": {
            "tokens": ["a", "b"],
            "token_logprobs": [-0.1, None],
            "top_logprobs": [{"a": -0.1, "c": -2.0}, None],
        }
    }
    lps = logprobs_of(choice)
    assert lps is not None
    assert [(t.token, t.logprob, len(t.top_logprobs)) for t in lps] == [
        ("a", -0.1, 2),
        ("b", 0.0, 0),
    ]
    assert text_params(SamplingParams(logprobs=True, top_logprobs=3)) == {"logprobs": 3}
