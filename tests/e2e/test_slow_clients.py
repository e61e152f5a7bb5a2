"""Slow clients against a real `dim gateway` process: a request whose headers or body trickle in
is dropped at its deadline (the probe held 300 such connections for 40 s and more); a normal
request and a WebSocket that outlives those deadlines are not."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import websockets

from events.bus import Bus
from services.accounts.keys import create_key
from services.nats_server import free_port
from services.settings import Settings
from tests.mesh import spawn, wait_ready, wait_until

HEADER_S, BODY_S = 1.0, 2.0


async def _closed_after(reader: asyncio.StreamReader, timeout_s: float) -> float:
    """Seconds until the server closes the connection (reads what it sends meanwhile)."""
    start = time.monotonic()
    while await asyncio.wait_for(reader.read(4096), timeout_s):
        pass
    return time.monotonic() - start


async def _trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    """Send `data` a byte at a time (until the server closes the connection)."""
    for byte in data:
        if writer.is_closing():
            return
        writer.write(bytes([byte]))
        try:
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(every_s)


async def test_trickling_clients_are_dropped_and_others_are_served(
    bus: Bus, settings: Settings
) -> None:
    port = free_port()
    bounded = settings.model_copy(
        update={"gateway_port": port, "header_timeout_s": HEADER_S, "body_timeout_s": BODY_S}
    )
    with spawn(bounded, "gateway"):
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base)
        request = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"

        # headers a byte every 0.2 s (they would take 16 s): closed at the header deadline
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sending = asyncio.create_task(_trickle(writer, request, 0.2))
        took = await _closed_after(reader, 10)
        assert HEADER_S - 0.2 <= took < HEADER_S + 2, took
        sending.cancel()
        writer.close()

        # a connection that sends nothing at all: the same deadline
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        took = await _closed_after(reader, 10)
        assert took < HEADER_S + 2, took
        writer.close()

        # headers at once, a 200-byte body a byte every 0.1 s (20 s): closed at the body deadline
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request + b"Content-Length: 200\r\n\r\n")
        await writer.drain()
        sending = asyncio.create_task(_trickle(writer, b"x" * 200, 0.1))
        took = await _closed_after(reader, 10)
        assert BODY_S - 0.3 <= took < BODY_S + 2, took
        sending.cancel()
        writer.close()

        async with httpx.AsyncClient(base_url=base) as http:
            # kept alive past both deadlines between requests? no: idle keep-alive is 5 s; a
            # second request on the same connection gets a fresh header deadline
            assert (await http.get("/healthz")).status_code == 200
            await asyncio.sleep(HEADER_S + 0.5)
            assert (await http.get("/healthz")).status_code == 200

        # a WebSocket outlives the request deadlines (its own bounds: pings, and its first
        # message within DIM_WS_FIRST_MESSAGE_S): its request, sent late, is still answered
        _, key = await create_key(
            bus, principal_id="ann", tenant="acme", roles=("member",), actor="test"
        )
        auth = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=base, headers=auth) as http:
            # the gateway learns a new key through its watch of the keys bucket
            await wait_until(lambda: _known(http), what="the gateway knows the new key")
        url = f"ws://127.0.0.1:{port}/v1/jobs/stream"
        async with websockets.connect(url, additional_headers=auth) as ws:
            await asyncio.sleep(HEADER_S + BODY_S)
            await ws.send("{}")
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply["type"] == "error" and "invalid job request" in str(reply), reply


async def _known(http: httpx.AsyncClient) -> bool:
    return (await http.get("/v1/models")).status_code == 200
