"""What a browser needs of a real gateway process: WebSocket auth by subprotocol (a key or
token, or a single-use ticket) with the `websockets` client, CORS for a named origin, the
dashboard's figures, and pages that reference nothing outside the gateway."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
import websockets

from events.bus import Bus
from gateway.tokens import _hs_kid
from gateway.ws_tickets import AUDIENCE
from services.accounts.keys import create_key
from services.nats_server import free_port
from services.settings import Settings
from tests.mesh import mesh, spawn, wait_until

ORIGIN = "https://dash.example"


@dataclass
class Live:
    http: httpx.AsyncClient
    ws: str
    key: str  # tenant acme, member "wendy"
    other: str  # tenant globex, member "otto"
    secret: str  # the gateway's HS256 secret


@pytest.fixture
async def live(bus: Bus, settings: Settings) -> AsyncIterator[Live]:
    port = free_port()
    s = settings.model_copy(update={"gateway_port": port, "cors_origins": (ORIGIN,)})
    async with mesh(s) as m:
        await m.orchestrator()
        await m.worker("w1", sim_ttft_ms=0, sim_tokens_per_s=40)
        _, key = await create_key(
            bus, principal_id="wendy", tenant="acme", roles=("member",), actor="t"
        )
        _, other = await create_key(
            bus, principal_id="otto", tenant="globex", roles=("member",), actor="t"
        )
        with spawn(s, "gateway"):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

                async def up() -> bool:
                    try:
                        r = await http.get("/v1/models", headers=_auth(key))
                    except httpx.TransportError:
                        return False
                    return r.status_code == 200 and bool(r.json()["data"])

                await wait_until(up, what="the gateway")
                yield Live(http, f"ws://127.0.0.1:{port}", key, other, s.jwt_secret)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _frames(ws: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    try:
        async for raw in ws:
            out.append(json.loads(raw))
    except websockets.exceptions.ConnectionClosedError:
        pass  # closed with an error code: the test reads ws.close_code
    return out


async def _job(live: Live, key: str, max_tokens: int = 4) -> str:
    r = await live.http.post(
        "/v1/jobs",
        headers=_auth(key),
        json={"model": "sim-small", "prompt": "hi", "max_tokens": max_tokens},
    )
    assert r.status_code == 202, r.text
    job_id: str = r.json()["job_id"]
    return job_id


async def _ticket(live: Live, key: str) -> str:
    r = await live.http.post("/v1/ws-tickets", headers=_auth(key))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["protocol"] == "dim.ticket" and body["expires_in"] == 30
    ticket: str = body["ticket"]
    return ticket


async def _stream(
    live: Live, job_id: str, protocols: list[str]
) -> tuple[Any, list[dict[str, Any]]]:
    """Open the job's stream offering `protocols` (no Authorization header); (socket, frames)."""
    async with websockets.connect(
        f"{live.ws}/v1/jobs/{job_id}/stream",
        subprotocols=protocols,  # type: ignore[arg-type]
    ) as ws:
        frames = await _frames(ws)
    return ws, frames


async def test_a_key_as_the_bearer_subprotocol_streams_and_only_the_name_is_echoed(
    live: Live,
) -> None:
    job_id = await _job(live, live.key)
    ws, frames = await _stream(live, job_id, ["dim.bearer", live.key])
    assert ws.subprotocol == "dim.bearer"
    assert ws.response.headers["sec-websocket-protocol"] == "dim.bearer"  # not the key
    assert ws.close_code == 1000
    assert frames[-1]["type"] == "end" and frames[-1]["status"] == "completed"
    assert "".join(f["text"] for f in frames if f["type"] == "text") == frames[-1]["output"]


async def test_an_access_token_as_the_bearer_subprotocol(live: Live, bus: Bus) -> None:
    from services import accounts

    await accounts.register(
        bus,
        email="ann@acme.example",
        password="correct horse battery",
        tenant="acme",
        roles=("member",),
        by="t",
    )
    r = await live.http.post(
        "/v1/auth/login", json={"email": "ann@acme.example", "password": "correct horse battery"}
    )
    token = r.json()["access_token"]
    job_id = await _job(live, token)
    ws, frames = await _stream(live, job_id, ["dim.bearer", token])
    assert ws.close_code == 1000 and frames[-1]["status"] == "completed"


async def test_a_ticket_opens_one_socket_and_only_one(live: Live) -> None:
    job_id = await _job(live, live.key)
    ticket = await _ticket(live, live.key)
    ws, frames = await _stream(live, job_id, ["dim.ticket", ticket])
    assert ws.subprotocol == "dim.ticket" and ws.close_code == 1000
    assert frames[-1]["status"] == "completed"
    ws, frames = await _stream(live, job_id, ["dim.ticket", ticket])  # the same ticket again
    assert ws.subprotocol == "dim.ticket" and ws.close_code == 4401
    assert [f["error"]["code"] for f in frames] == ["ticket_used"]


async def test_a_ticket_submits_and_streams_too(live: Live) -> None:
    ticket = await _ticket(live, live.key)
    async with websockets.connect(
        f"{live.ws}/v1/jobs/stream",
        subprotocols=["dim.ticket", ticket],  # type: ignore[list-item]
    ) as ws:
        await ws.send(json.dumps({"model": "sim-small", "prompt": "hi", "max_tokens": 3}))
        frames = await _frames(ws)
    assert frames[0]["type"] == "accepted" and frames[-1]["status"] == "completed"


def _forged(secret: str, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": "dim",
        "aud": AUDIENCE,
        "sub": "wendy",
        "tid": "acme",
        "roles": ["member"],
        "jti": f"t{now}",
        "iat": now,
        "exp": now + 30,
    } | claims
    return jwt.encode(body, secret, algorithm="HS256", headers={"kid": _hs_kid(secret)})


@pytest.mark.parametrize(
    ("make", "code"),
    [
        # signed by the gateway's own key, but expired a minute ago
        (lambda secret: _forged(secret, exp=int(time.time()) - 60), "ticket_expired"),
        # valid in every way but the key that signed it
        (lambda secret: _forged("another-secret-that-is-long-enough-for-hs256"), "invalid_ticket"),
        (lambda secret: "not-a-ticket", "invalid_ticket"),
    ],
)
async def test_bad_tickets_are_refused(live: Live, make: Any, code: str) -> None:
    job_id = await _job(live, live.key)
    ws, frames = await _stream(live, job_id, ["dim.ticket", make(live.secret)])
    assert ws.close_code == 4401
    assert [f["error"]["code"] for f in frames] == [code]


async def test_an_access_token_is_not_a_ticket_nor_a_ticket_a_token(live: Live, bus: Bus) -> None:
    job_id = await _job(live, live.key)
    ticket = await _ticket(live, live.key)
    ws, frames = await _stream(live, job_id, ["dim.bearer", ticket])
    assert ws.close_code == 4401 and frames[0]["error"]["code"] == "invalid_token"
    r = await live.http.get(f"/v1/jobs/{job_id}", headers=_auth(ticket))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"


@pytest.mark.parametrize(
    ("protocols", "code"),
    [
        (["dim.bearer", "dim_nope"], "invalid_api_key"),
        (["dim.bearer"], "missing_api_key"),  # the name without its secret
        (["something.else"], "missing_api_key"),
    ],
)
async def test_bad_bearer_offers_are_refused(live: Live, protocols: list[str], code: str) -> None:
    job_id = await _job(live, live.key)
    ws, frames = await _stream(live, job_id, protocols)
    assert ws.close_code == 4401
    assert [f["error"]["code"] for f in frames] == [code]


async def test_another_tenants_job_is_not_found_by_ticket_or_bearer(live: Live) -> None:
    job_id = await _job(live, live.key)  # acme's
    ws, frames = await _stream(live, job_id, ["dim.ticket", await _ticket(live, live.other)])
    assert ws.close_code == 4404 and frames[0]["error"]["code"] == "job_not_found"
    ws, frames = await _stream(live, job_id, ["dim.bearer", live.other])
    assert ws.close_code == 4404 and frames[0]["error"]["code"] == "job_not_found"


async def test_the_authorization_header_still_works_and_wins(live: Live) -> None:
    job_id = await _job(live, live.key)
    async with websockets.connect(
        f"{live.ws}/v1/jobs/{job_id}/stream",
        additional_headers=_auth(live.key),
        subprotocols=["dim.bearer", "dim_ignored"],  # type: ignore[list-item]
    ) as ws:
        frames = await _frames(ws)
    assert ws.close_code == 1000 and frames[-1]["status"] == "completed"


async def test_a_ticket_needs_a_caller(live: Live) -> None:
    r = await live.http.post("/v1/ws-tickets")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"


async def test_cors_for_the_named_origin_only(live: Live) -> None:
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    r = await live.http.options("/v1/jobs", headers=preflight)
    assert r.status_code in (200, 204)
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in r.headers
    r = await live.http.get("/v1/models", headers={"Origin": ORIGIN, **_auth(live.key)})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    r = await live.http.get(
        "/v1/models", headers={"Origin": "https://evil.example", **_auth(live.key)}
    )
    assert "access-control-allow-origin" not in r.headers


async def test_stats_count_requests_and_ttft_and_show_the_queue(live: Live) -> None:
    before = (await live.http.get("/v1/stats", headers=_auth(live.key))).json()
    body = {
        "model": "sim-small",
        "stream": True,
        "max_tokens": 3,
        "messages": [{"role": "user", "content": "hi"}],
    }
    async with live.http.stream(
        "POST", "/v1/chat/completions", headers=_auth(live.key), json=body
    ) as r:
        assert r.status_code == 200
        _ = [line async for line in r.aiter_lines()]
    after = (await live.http.get("/v1/stats", headers=_auth(live.key))).json()
    assert after["requests_total"] == before["requests_total"] + 1  # the polls are not counted
    assert after["ttft"]["count"] == before["ttft"]["count"] + 1
    assert after["ttft"]["sum_s"] > before["ttft"]["sum_s"]
    assert after["queue"] == {"sim-small": 0} and after["nodes_live"] == 1
    assert after["at"] >= before["at"]


async def test_the_pages_reference_nothing_outside_the_gateway(live: Live) -> None:
    ui = await live.http.get("/ui")
    assert ui.status_code == 200 and ui.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in ui.headers["content-security-policy"]
    docs = await live.http.get("/openapi")
    assert docs.status_code == 200
    assert "default-src 'self'" in docs.headers["content-security-policy"]
    assert (await live.http.get("/openapi/openapi.json")).json()["info"]["title"] == "dim gateway"
    for page in (ui.text, docs.text):
        refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page)
        assert refs and all(r.startswith("/") for r in refs), refs
    assert "/ui/static/vendor/redoc/redoc.standalone.js" in docs.text
    assert "fonts.googleapis" not in docs.text
    for ref in re.findall(r"""(?:src|href)\s*=\s*["'](/ui/static/[^"']+)""", ui.text + docs.text):
        assert (await live.http.get(ref)).status_code == 200, ref
    for module in ("app.js", "api.js", "charts.js"):
        js = (await live.http.get(f"/ui/static/{module}")).text
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", js), module


async def test_a_ticket_dies_with_its_key(live: Live, bus: Bus) -> None:
    from services.accounts.keys import read_key, revoke_key

    record, key = await create_key(
        bus, principal_id="wendy", tenant="acme", roles=("member",), actor="t"
    )
    job_id = await _job(live, key)
    ticket = await _ticket(live, key)
    await revoke_key(bus, record, by="t")

    async def revoked() -> bool:
        r = await live.http.get("/v1/me", headers=_auth(key))
        return r.status_code == 401

    await wait_until(revoked, what="the gateway to see the revocation")
    assert await read_key(bus, record.key_id) is None
    ws, frames = await _stream(live, job_id, ["dim.ticket", ticket])
    assert ws.close_code == 4401 and frames[0]["error"]["code"] == "invalid_api_key"
