"""The upstream engine's HTTP/1.1 client against scripted local servers: framing (Content-Length,
chunked, the connection's end), keep-alive reuse, a stale kept-alive connection (sent again once,
only when it was closed at once), errors and timeouts, a reset, bytes after an answer, abort,
draining a released answer."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.engines import http_client
from services.engines.http_client import (
    ConnectError,
    ConnectionAborted,
    HttpClient,
    ReadTimeout,
    RemoteProtocolError,
)
from tests.unit.scripted_server import Server


@contextlib.asynccontextmanager
async def client_for(server: Server, **kw: float) -> AsyncIterator[HttpClient]:
    client = HttpClient(server.url(), headers={"authorization": "Bearer k"}, **kw)  # type: ignore[arg-type]
    try:
        yield client
    finally:
        await client.close()
        await asyncio.sleep(0)  # let the transports finish closing


def sized(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


def chunked(*parts: bytes) -> bytes:
    framed = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts)
    return (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + framed + b"0\r\nx-t: 1\r\n\r\n"
    )


async def get(client: HttpClient, path: str = "/models", body: bytes | None = None) -> bytes:
    response = await client.request("POST" if body else "GET", path, body)
    try:
        return await response.read()
    finally:
        response.release()


async def test_content_length_answers_reuse_one_connection_and_send_the_headers() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            writer.write(sized(b'{"ok":1}'))

    async with Server(handler) as server, client_for(server) as client:
        for _ in range(3):
            assert await get(client, "/chat/completions", b'{"a":1}') == b'{"ok":1}'
        assert server.connections == 1
        head, _, body = server.requests[0].partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
        assert f"host: 127.0.0.1:{server.port}" in lines
        assert "authorization: Bearer k" in lines and "content-length: 7" in lines
        assert body == b'{"a":1}'


async def test_a_chunked_answer_written_byte_by_byte_arrives_whole() -> None:
    parts = (b"data: h\xc3\xa9\n\n", b"data: [DONE]\n\n")
    answer = chunked(*parts)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            for i in range(len(answer)):
                writer.write(answer[i : i + 1])
                await writer.drain()
                if i % 7 == 0:
                    await asyncio.sleep(0)

    async with Server(handler) as server, client_for(server) as client:
        response = await client.request("POST", "/completions", b"{}")
        assert response.status == 200 and response.header("Transfer-Encoding") == "chunked"
        received = []
        while data := await response.receive():
            received.append(data)
        response.release()
        assert b"".join(received) == b"".join(parts)
        assert await get(client, "/completions", b"{}") == b"".join(parts)
        assert server.connections == 1  # the chunked answer ended cleanly: kept alive


async def test_an_answer_framed_by_the_connections_end_is_read_to_it() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: 1\n\n")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"data: 2\n\n")

    async with Server(handler) as server, client_for(server) as client:
        assert await get(client) == b"data: 1\n\ndata: 2\n\n"
        assert await get(client) == b"data: 1\n\ndata: 2\n\n"
        assert server.connections == 2  # not reusable


async def test_connection_close_is_honoured() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(sized(b"x", "connection: close\r\n"))
        await reader.read()  # the client closes it: it must not wait for the server to

    async with Server(handler) as server, client_for(server) as client:
        assert await get(client) == b"x"
        assert await get(client) == b"x"
        assert server.connections == 2


async def idle_connections(client: HttpClient, n: int) -> None:
    """`n` requests at once: each opens a connection of its own, kept idle after."""
    await asyncio.gather(*(get(client, "/gen", b"{}") for _ in range(n)))
    assert len(client._idle) == n


async def test_a_kept_alive_connection_the_server_closed_is_replaced_unseen() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = server.connections <= 2
        await server.read_request(reader)
        await asyncio.sleep(0.01)
        writer.write(sized(b"x"))
        await writer.drain()
        if first:  # the next request is read, then the connection closed without an answer
            await server.read_request(reader)
            return
        while await server.read_request(reader):
            writer.write(sized(b"x"))

    async with Server(handler) as server, client_for(server) as client:
        await idle_connections(client, 2)  # both stale
        assert await get(client, "/gen", b"{}") == b"x"  # sent again once, on a new connection
        assert (server.connections, len(server.requests)) == (3, 4)


async def test_a_request_the_server_may_have_worked_on_is_not_sent_again() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await asyncio.sleep(0.01)
        writer.write(sized(b"x"))
        if await server.read_request(reader):  # worked on, then dropped without an answer
            await asyncio.sleep(0.5)  # well past a close that means 'closed while idle'

    async with Server(handler) as server, client_for(server) as client:
        await idle_connections(client, 3)
        with pytest.raises(RemoteProtocolError):
            await client.request("POST", "/gen", b"{}")
        assert len(server.requests) == 4  # three answered, the failed one sent once


async def test_a_connection_closed_while_idle_leaves_the_pool() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(sized(b"x"))  # then the server's keep-alive timeout closes it

    async with Server(handler) as server, client_for(server) as client:
        assert await get(client) == b"x"
        await asyncio.sleep(0.05)
        assert not client._idle
        assert await get(client) == b"x"
        assert server.connections == 2


async def test_the_server_going_away_mid_answer_is_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")

    async with Server(handler) as server, client_for(server) as client:
        response = await client.request("GET", "/models")
        assert await response.receive() == b"partial"
        with pytest.raises(RemoteProtocolError):
            await response.receive()
        response.release()


async def test_a_reset_ends_an_answer_framed_by_the_connections_end_in_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a TCP reset, not the answer's end

    async with Server(handler) as server, client_for(server) as client:
        response = await client.request("GET", "/models")
        assert await response.receive() == b"partial"
        with pytest.raises(RemoteProtocolError):
            await response.receive()
        response.release()


async def test_a_second_answer_in_the_same_read_is_not_taken_into_the_first() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            second = b"HTTP/1.1 500 X\r\ncontent-length: 3\r\n\r\nbad"
            writer.write(sized(b"ok") + second)  # one write: one read for the client

    async with Server(handler) as server, client_for(server) as client:
        response = await client.request("GET", "/models")
        assert response.status == 200
        assert await response.read() == b"ok"
        response.release()
        assert not client._idle  # its framing is lost: not reused
        assert await get(client) == b"ok"
        assert server.connections == 2


async def test_a_second_answer_after_a_drained_one_does_not_keep_its_connection_twice() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nDONE\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(b"0\r\n\r\n" + sized(b"extra"))  # the end, and an answer more

    async with Server(handler) as server, client_for(server) as client:
        response = await client.request("POST", "/completions", b"{}")
        assert await response.receive() == b"DONE"
        response.release()  # drained: its end comes with the extra answer
        await asyncio.sleep(0.1)
        assert client._idle == []
        assert await get(client, "/completions", b"{}") == b"DONE"
        assert server.connections == 2


async def test_a_malformed_answer_is_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await reader.read()

    async with Server(handler) as server, client_for(server) as client:
        with pytest.raises(RemoteProtocolError):
            await client.request("GET", "/models")


async def test_silence_past_the_read_timeout_is_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        if server.connections == 1:  # the second connection gets no answer at all
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await reader.read()

    async with Server(handler) as server, client_for(server, read_timeout_s=0.2) as client:
        response = await client.request("GET", "/models")
        assert await response.receive() == b"abc"
        with pytest.raises(ReadTimeout):
            await response.receive()
        response.release()
        with pytest.raises(ReadTimeout):  # no answer at all: the same bound
            await client.request("GET", "/models", timeout_s=0.1)


async def test_nothing_listening_is_a_connect_error() -> None:
    async with Server(lambda r, w: asyncio.sleep(0)) as server:
        port = server.port
    client = HttpClient(f"http://127.0.0.1:{port}/v1", connect_timeout_s=1)
    with pytest.raises(ConnectError):
        await client.request("GET", "/models")
    await client.close()


async def test_abort_closes_the_connection_and_the_server_sees_it() -> None:
    gone = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        if await reader.read(1) == b"":
            gone.set()

    async with Server(handler) as server, client_for(server) as client:
        response = await client.request("GET", "/models")
        assert await response.receive() == b"abc"
        waiting = asyncio.ensure_future(response.receive())
        await asyncio.sleep(0.01)
        response.abort()
        with pytest.raises(ConnectionAborted):
            await waiting
        await asyncio.wait_for(gone.wait(), 2)
        assert not client._idle


async def test_abort_after_release_leaves_the_connection_to_its_next_request() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            await asyncio.sleep(0.05)
            writer.write(sized(b"x"))

    async with Server(handler) as server, client_for(server) as client:
        first = await client.request("GET", "/a")
        assert await first.read() == b"x"
        first.release()
        second = asyncio.ensure_future(get(client, "/b"))  # on the same connection
        await asyncio.sleep(0.01)
        first.abort()  # a stale handle: does nothing
        assert await second == b"x"
        assert server.connections == 1


async def test_a_released_answer_is_drained_and_its_connection_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nDONE\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(b"0\r\n\r\n")

    async with Server(handler) as server, client_for(server) as client:
        response = await client.request("POST", "/completions", b"{}")
        assert await response.receive() == b"DONE"
        response.release()  # the body's end has not arrived yet
        await asyncio.sleep(0.1)
        assert len(client._idle) == 1
        assert await get(client, "/completions", b"{}") == b"DONE"
        assert server.connections == 1


@pytest.mark.parametrize("high_water", [256 * 1024, 1])
async def test_an_interim_answer_is_skipped_and_large_bodies_flow(
    high_water: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_client, "_HIGH_WATER", high_water)  # 1: every read pauses
    big = bytes(range(256)) * 4096  # 1 MiB: past the high-water mark, reading pauses

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + sized(big))

    async with Server(handler) as server, client_for(server, read_timeout_s=2) as client:
        for _ in range(2):  # the whole answer came while reading was paused: kept, and read on
            response = await client.request("GET", "/models")
            assert response.status == 200
            await asyncio.sleep(0.05)
            assert await response.read() == big
            response.release()
        assert server.connections == 1


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="not an http"):
        HttpClient("ftp://example.com/v1")
    assert HttpClient("https://example.com/v1").port == 443


def _self_signed(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh certificate for 127.0.0.1, and a client context trusting it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test upstream")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return server, ssl.create_default_context(cadata=cert_pem.decode())


async def test_https_verifies_the_server_and_keeps_alive(tmp_path: Path) -> None:
    server_tls, trusting = _self_signed(tmp_path)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            writer.write(sized(b"secure"))

    async with Server(handler, tls=server_tls) as server:
        client = HttpClient(server.url(), ssl_context=trusting)
        try:
            assert await get(client) == b"secure"
            assert await get(client) == b"secure"
            assert server.connections == 1
        finally:
            await client.close()
            await asyncio.sleep(0.05)
        untrusting = HttpClient(server.url())  # certifi's bundle does not hold it
        with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.request("GET", "/models")
        await untrusting.close()
