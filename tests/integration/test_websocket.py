"""WebSocket streaming against a real gateway process, with the `websockets` client."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import websockets

from events.bus import Bus
from services.accounts.keys import create_key
from services.nats_server import free_port
from services.settings import Settings
from tests.mesh import mesh, spawn, wait_until


@dataclass
class Live:
    http: httpx.AsyncClient
    ws: str
    auth: dict[str, str]


@pytest.fixture
async def live(bus: Bus, settings: Settings) -> AsyncIterator[Live]:
    port = free_port()
    # a short first-message wait and a small per-tenant cap, to test them (the tests here hold
    # at most two sockets at once otherwise)
    bounds = {"ws_first_message_s": 2.0, "ws_per_tenant": 3}
    s = settings.model_copy(update={"gateway_port": port, **bounds})
    async with mesh(s) as m:
        await m.orchestrator()
        await m.worker("slow", sim_ttft_ms=0, sim_tokens_per_s=20)
        _, key = await create_key(
            bus, principal_id="wendy", tenant="acme", roles=("member",), actor="test"
        )
        auth = {"Authorization": f"Bearer {key}"}
        with spawn(s, "gateway"):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

                async def up() -> bool:
                    try:
                        r = await http.get("/v1/models", headers=auth)
                    except httpx.TransportError:
                        return False
                    return r.status_code == 200 and bool(r.json()["data"])

                await wait_until(up, what="the gateway")
                yield Live(http, f"ws://127.0.0.1:{port}", auth)


async def _frames(ws: Any, limit: int | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    try:
        async for raw in ws:
            out.append(json.loads(raw))
            if limit is not None and len(out) >= limit:
                break
    except websockets.exceptions.ConnectionClosedError:
        pass  # closed with an error code: the test reads ws.close_code
    return out


async def test_stream_drop_and_resume_misses_nothing_and_repeats_nothing(live: Live) -> None:
    job_id = (
        await live.http.post(
            "/v1/jobs", headers=live.auth, json={"model": "sim-small", "prompt": "tell me"}
        )
    ).json()["job_id"]
    async with websockets.connect(
        f"{live.ws}/v1/jobs/{job_id}/stream", additional_headers=live.auth
    ) as ws:
        first = await _frames(ws, limit=6)  # then the connection drops mid-answer
    last_seq = max((f["seq"] for f in first if f["type"] == "text"), default=0)
    last_event = max((f["event_seq"] for f in first if f["type"] == "event"), default=0)
    assert last_seq >= 1
    url = f"{live.ws}/v1/jobs/{job_id}/stream?after={last_seq}&after_event={last_event}"
    async with websockets.connect(url, additional_headers=live.auth) as ws:
        rest = await _frames(ws)
        assert ws.close_code == 1000
    frames = first + rest
    texts = [f for f in frames if f["type"] == "text"]
    assert [f["seq"] for f in texts] == list(range(1, len(texts) + 1))  # no gap, no repeat
    events = [f["event_seq"] for f in frames if f["type"] == "event"]
    assert events == sorted(set(events))
    assert [f["event"] for f in frames if f["type"] == "event"][-1] == "job.completed"
    end = frames[-1]
    assert end["type"] == "end" and end["status"] == "completed"
    assert "".join(f["text"] for f in texts) == end["output"]
    assert all(f["offset"] == sum(len(t["text"]) for t in texts[:i]) for i, f in enumerate(texts))


async def test_submit_and_stream_socket(live: Live) -> None:
    async with websockets.connect(f"{live.ws}/v1/jobs/stream", additional_headers=live.auth) as ws:
        await ws.send(json.dumps({"model": "sim-small", "prompt": "hi", "max_tokens": 5}))
        frames = await _frames(ws)
    assert frames[0]["type"] == "accepted"
    assert frames[-1]["type"] == "end" and frames[-1]["usage"]["completion_tokens"] == 5
    assert frames[-1]["finish_reason"] == "length"


async def test_cancel_over_the_socket(live: Live) -> None:
    async with websockets.connect(f"{live.ws}/v1/jobs/stream", additional_headers=live.auth) as ws:
        await ws.send(json.dumps({"model": "sim-small", "prompt": "a long one"}))
        first = await _frames(ws, limit=3)
        await ws.send(json.dumps({"type": "cancel"}))
        rest = await _frames(ws)
    assert first[0]["type"] == "accepted"
    assert rest[-1]["type"] == "end" and rest[-1]["status"] == "cancelled"


@pytest.mark.parametrize(
    ("path", "headers", "code", "error"),
    [
        ("/v1/jobs/stream", {}, 4401, "missing_api_key"),
        ("/v1/jobs/whatever/stream", {"Authorization": "Bearer dim_nope"}, 4401, "invalid_api_key"),
        ("/v1/jobs/01NOSUCHJOB0000000000000000/stream", None, 4404, "job_not_found"),
        ("/v1/jobs/01NOSUCHJOB0000000000000000/stream?after=x", None, 4404, "job_not_found"),
    ],
)
async def test_socket_errors_are_frames_then_a_close(
    live: Live, path: str, headers: dict[str, str] | None, code: int, error: str
) -> None:
    async with websockets.connect(
        f"{live.ws}{path}", additional_headers=live.auth if headers is None else headers
    ) as ws:
        frames = await _frames(ws)
        assert ws.close_code == code
    assert (
        frames == [frames[0]]
        and frames[0]["type"] == "error"
        and frames[0]["error"]["code"] == error
    )


async def test_a_bad_job_request_on_the_socket(live: Live) -> None:
    async with websockets.connect(f"{live.ws}/v1/jobs/stream", additional_headers=live.auth) as ws:
        await ws.send(json.dumps({"model": "sim-small"}))
        frames = await _frames(ws)
        assert ws.close_code == 4400
    assert frames[0]["error"]["code"] == "invalid_request"
    assert "exactly one of 'prompt' or 'messages'" in frames[0]["error"]["message"]


async def test_a_socket_that_sends_no_job_request_is_closed(live: Live) -> None:
    async with websockets.connect(f"{live.ws}/v1/jobs/stream", additional_headers=live.auth) as ws:
        frames = await _frames(ws)  # nothing sent: after DIM_WS_FIRST_MESSAGE_S (2 s here)
        assert ws.close_code == 4408
    assert frames[0]["error"]["code"] == "timeout"


async def test_a_first_message_over_the_body_limit_is_refused(live: Live) -> None:
    """The probe sent a 5 MB job as its first message (uvicorn allows 16 MiB frames)."""
    async with websockets.connect(
        f"{live.ws}/v1/jobs/stream", additional_headers=live.auth, max_size=None
    ) as ws:
        await ws.send(json.dumps({"model": "sim-small", "prompt": "x" * 1_500_000}))
        await _frames(ws)
        assert ws.close_code == 1009  # message too big: the server reads no more of it
    listed = await live.http.get("/v1/jobs", headers=live.auth)
    assert listed.json()["data"] == []  # nothing was accepted


async def test_a_tenants_sockets_are_capped(live: Live) -> None:
    url = f"{live.ws}/v1/jobs/stream"
    async with contextlib.AsyncExitStack() as held:
        for _ in range(3):  # DIM_WS_PER_TENANT here; each waits for its job request
            await held.enter_async_context(websockets.connect(url, additional_headers=live.auth))
        await asyncio.sleep(0.2)  # each is accepted and counted
        async with websockets.connect(url, additional_headers=live.auth) as extra:
            frames = await _frames(extra)
            assert extra.close_code == 4429
        assert frames[0]["error"]["code"] == "too_many_connections"
    async with websockets.connect(url, additional_headers=live.auth) as ws:  # room again
        await ws.send(json.dumps({"model": "sim-small", "prompt": "hi", "max_tokens": 2}))
        assert json.loads(await ws.recv())["type"] == "accepted"
