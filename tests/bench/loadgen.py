"""A lean HTTP/1.1 load generator for the benchmarks: keep-alive connections over asyncio streams.

httpx costs ~4.5 ms of CPU per request on this machine, more than the gateway itself, and the
load generator shares the cores with the system under test; this client costs a fraction of
that, so the numbers measure dim rather than the client. It speaks just enough HTTP/1.1 for
the benchmarks: a request with a body, and a response with `Content-Length` or chunked.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any


class HttpError(Exception):
    """A non-2xx answer."""


class Connection:
    """One keep-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, head: bytes, body: bytes) -> tuple[int, dict[str, str]]:
        """Write one request; read the status line and headers."""
        self.writer.write(head + body)
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        raw = await self.reader.readuntil(b"\r\n\r\n")
        headers = {}
        for line in raw.decode("latin-1").split("\r\n"):
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return status, headers

    async def body_chunks(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        """The response body, as it arrives."""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    return
                chunk = await self.reader.readexactly(size + 2)
                yield chunk[:-2]
        else:
            length = int(headers.get("content-length", "0"))
            if length:
                yield await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


class Client:
    """A pool of keep-alive connections to one server."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._extra = extra
        self._idle: list[Connection] = []

    async def _open(self, head: bytes, body: bytes) -> tuple[Connection, int, dict[str, str]]:
        """Send on an idle connection, or on a new one if the server closed the idle one."""
        while self._idle:
            conn = self._idle.pop()
            try:
                return conn, *(await conn.send(head, body))
            except (asyncio.IncompleteReadError, ConnectionError):
                conn.close()  # the server's keep-alive timeout closed it while idle
        conn = await Connection.open(self.host, self.port)
        try:
            return conn, *(await conn.send(head, body))
        except BaseException:
            conn.close()
            raise

    def _head(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
        extra = self._extra + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        return (
            f"POST {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
        ).encode()

    async def post(
        self, path: str, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> tuple[dict[str, str], bytes]:
        """POST JSON (with extra `headers`); the response headers and whole body (raises
        `HttpError` unless 2xx)."""
        body = json.dumps(payload).encode()
        conn, status, headers = await self._open(self._head(path, body, headers), body)
        try:
            data = b"".join([c async for c in conn.body_chunks(headers)])
        except BaseException:
            conn.close()
            raise
        self._idle.append(conn)
        if not 200 <= status < 300:
            raise HttpError(f"{status}: {data[:300]!r}")
        return headers, data

    async def stream(self, path: str, payload: dict[str, Any]) -> AsyncIterator[bytes]:
        """POST JSON; the body's chunks as they arrive (raises `HttpError` unless 2xx)."""
        body = json.dumps(payload).encode()
        conn, status, headers = await self._open(self._head(path, body), body)
        try:
            if not 200 <= status < 300:
                data = b"".join([c async for c in conn.body_chunks(headers)])
                raise HttpError(f"{status}: {data[:300]!r}")
            async for chunk in conn.body_chunks(headers):
                yield chunk
        except BaseException:
            conn.close()
            raise
        self._idle.append(conn)

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle = []
