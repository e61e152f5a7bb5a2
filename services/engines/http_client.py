# One module on purpose: the connection, its Response and the pool share state (idle, complete).
"""A small HTTP/1.1 client with a keep-alive pool, for the OpenAI-upstream engine.

httpx cost the worker ~4.7 ms of CPU per streamed completion on the project's 2-core machine
(its connection pool scans every connection per request, and each read passes through anyio,
h11 and several context managers) — more than the whole rest of the mesh spends on a request.
This client is one asyncio protocol per connection over httptools' C parser (llhttp, already
uvicorn's parser here): responses framed by ``Content-Length``, chunked transfer encoding or
the connection's end; keep-alive connections reused last-in first-out; a request sent on a
kept-alive connection the server closed at once (nothing of the answer arrived, the close came
within `_STALE_S` of the write: it was closed while idle) is sent again once, on a new
connection — one the server may have worked on never is; connect and read timeouts; ``http``
and ``https``. It speaks what the engine needs — one request at a time per connection, bodies
in memory, no redirects, no proxies, no HTTP/2 — and nothing more.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import cast
from urllib.parse import urlsplit

import httptools

_HIGH_WATER = 256 * 1024  # body bytes buffered before the socket stops being read
_DRAIN_S = 1.0  # how long a released connection may take to finish its answer and be reused
# A reused connection closed this soon after the request was written, with no byte of answer,
# was closed while idle (the close crossed the request): the request is sent again. Later, the
# server may have worked on it (a POST is not sent twice). About a round trip, with slack.
_STALE_S = 0.25


class HttpError(Exception):
    """The exchange failed below HTTP status codes: connect, timeout, connection, framing."""


class ConnectError(HttpError):
    """The server could not be reached (refused, unresolvable, connect timeout)."""


class ReadTimeout(HttpError):
    """The server said nothing for longer than the read timeout."""


class RemoteProtocolError(HttpError):
    """The server closed the connection mid-answer or sent something that is not HTTP/1.1."""


class ConnectionAborted(HttpError):
    """The response was closed by this side (`Response.abort`) while it was being read."""


class _Stale(Exception):
    """A kept-alive connection was closed by the server at once, before any byte of the answer."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: parses responses as they arrive, wakes the reader."""

    def __init__(self, pool: HttpClient) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.closed_at = 0.0  # loop time the connection ended
        self.idle = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.body: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self.error: HttpError | None = None
        self.received = False  # any byte of this request's answer
        self.draining = False
        self.keep_alive = False
        self._framed = False  # Content-Length or chunked: the answer ends before the connection

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.idle or self.complete:
            self.close()  # bytes nobody asked for: the connection's framing is lost
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(RemoteProtocolError(f"malformed HTTP response: {exc}"))
            return
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True  # the reader is behind: stop reading until it catches up
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.closed_at = self._loop.time()
        self._pool._forget(self)
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        if (
            exc is None  # a clean close: a reset is not the answer's end
            and self.headers_done
            and not self.complete
            and not self._framed
            and self.error is None
        ):
            self.complete = True  # an answer framed by the connection's end has ended
        elif not self.complete and self.error is None:
            self.error = RemoteProtocolError(
                "the server closed the connection" + (f": {exc!r}" if exc else "")
            )
        self._wake()

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # a message after the answer, in the read that ended it
            self.error = RemoteProtocolError("the server sent a message nobody asked for")
            raise self.error  # stops the parser: data_received fails the connection

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if 100 <= self.status < 200:
            self.headers = []  # an interim answer (100 Continue): the real one follows
            self._framed = False
            return
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        if not self.draining:
            self.body.append(body)
            self._buffered += len(body)

    def on_message_complete(self) -> None:
        if not self.headers_done:
            return  # the end of an interim answer
        self.complete = True
        # llhttp answers this only inside the callback: it resets for the next message after
        self.keep_alive = self._parser.should_keep_alive()
        if self.draining:
            self._release()

    # used by Response and HttpClient

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: HttpError) -> None:
        if self.error is None:
            self.error = error
        self.close()
        self._wake()

    def close(self) -> None:
        """Close the connection (the server sees its client go)."""
        if self.error is None and not self.complete:
            self.error = ConnectionAborted("closed by this side")  # not the answer's end
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True
        self._pool._forget(self)

    def _resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    async def wait(self, timeout_s: float) -> None:
        """Until something arrives, the connection ends, or `timeout_s` of silence."""
        self._resume()
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout_s, _time_out, waiter)
        try:
            await waiter
        except ReadTimeout as exc:
            self._fail(exc)  # the answer's state is unknown: the connection cannot be reused
            raise
        finally:
            timer.cancel()
            self._waiter = None

    def start(self, request: bytes) -> None:
        """Send one request on this connection."""
        self._reset()
        self.idle = False
        assert self.transport is not None
        self.transport.write(request)

    def release(self) -> None:
        """The reader is done: keep the connection for the next request if its answer ended
        cleanly, let it finish briefly if not (e.g. the chunked body's end after ``[DONE]``),
        else close it."""
        if self.closed or self.error is not None or not self.headers_done:
            self.close()
        elif self.complete:
            self._release()
        else:
            self.draining = True
            self.body, self._buffered = [], 0
            self._resume()
            self._drain_timer = self._loop.call_later(_DRAIN_S, self.close)

    def _release(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if self.keep_alive and not self.closed:
            self._resume()  # the answer's end may have come in the read that paused it
            self._pool._keep(self)
        else:
            self.close()


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(ReadTimeout("no answer within the read timeout"))


class Response:
    """One answer, as it arrives: `status` is known once the client returns it."""

    def __init__(self, connection: _Connection, read_timeout_s: float) -> None:
        self._conn = connection
        self._timeout = read_timeout_s
        self.status = connection.status
        self._released = False

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), if present."""
        key = name.lower().encode("latin-1")
        for n, v in self._conn.headers:
            if n.lower() == key:
                return v.decode("latin-1")
        return None

    async def receive(self) -> bytes:
        """The body bytes that arrived since the last call, waiting for some; ``b""`` once the
        body has ended. Raises `HttpError` (`ReadTimeout`, `RemoteProtocolError`,
        `ConnectionAborted`)."""
        conn = self._conn
        while not conn.body:
            if conn.complete:
                return b""
            if conn.error is not None:
                raise conn.error
            if conn.closed:
                raise RemoteProtocolError("the connection was closed")
            await conn.wait(self._timeout)
        body = conn.body
        data = body[0] if len(body) == 1 else b"".join(body)
        conn.body = []
        conn._buffered = 0
        return data

    async def read(self) -> bytes:
        """The whole (rest of the) body."""
        parts = []
        while data := await self.receive():
            parts.append(data)
        return b"".join(parts)

    def release(self) -> None:
        """Done with the answer: the connection goes back to the pool (or is closed)."""
        if not self._released:
            self._released = True
            self._conn.release()

    def abort(self) -> None:
        """Close the connection now; `receive` raises `ConnectionAborted` from now on (what had
        arrived and was not read yet is dropped). Does nothing once released: the connection may
        serve another request by then."""
        if self._released:
            return
        self._released = True
        self._conn.body = []
        self._conn._fail(ConnectionAborted("the response was closed"))


def tls_context() -> ssl.SSLContext:
    """Verified TLS trusting what httpx trusted by default: the bundle in ``SSL_CERT_FILE`` or
    the directory in ``SSL_CERT_DIR`` when set, else certifi's bundle where it is installed
    (else the system's)."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


class HttpClient:
    """Requests to one base URL over a pool of keep-alive connections.

    The pool does not bound how many connections are open at once — the engine's caller (the
    worker) bounds requests in flight — but keeps at most `max_idle` idle ones.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 600.0,
        max_idle: int = 32,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.tls = url.scheme == "https"
        self.host = url.hostname
        self.port = url.port or (443 if self.tls else 80)
        self._prefix = url.path.rstrip("/")
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = host if default_port else f"{host}:{self.port}"
        fixed = {"host": authority, "user-agent": "dim", "accept": "*/*"} | (headers or {})
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._max_idle = max_idle
        self._ssl = (ssl_context or tls_context()) if self.tls else None
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    def _head(self, method: str, path: str, body: bytes | None, content_type: str) -> bytes:
        framing = (
            f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
            if body is not None
            else ""
        )
        return f"{method} {self._prefix}{path} HTTP/1.1\r\n{self._fixed}{framing}\r\n".encode(
            "latin-1"
        )

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        timeout_s: float | None = None,
    ) -> Response:
        """Send a request; returns once the answer's status and headers are in. The caller
        reads the body (`Response.receive`, `Response.read`) and then must `release` it.
        `timeout_s` replaces the read timeout for this request."""
        message = self._head(method, path, body, content_type)
        if body:
            message += body
        timeout = self.read_timeout_s if timeout_s is None else timeout_s
        while self._idle:
            conn = self._idle.pop()
            conn.idle = False
            if conn.closed:
                continue
            try:
                return await self._exchange(conn, message, timeout, reused=True)
            except _Stale:
                break  # the server closed it while idle: sent again once, on a new connection
        return await self._exchange(await self._connect(), message, timeout, reused=False)

    async def _exchange(
        self, conn: _Connection, message: bytes, timeout_s: float, *, reused: bool
    ) -> Response:
        conn.start(message)
        sent_at = conn._loop.time() if reused else 0.0
        try:
            while not conn.headers_done:
                if conn.error is not None:
                    if (
                        reused
                        and not conn.received
                        and isinstance(conn.error, RemoteProtocolError)
                        and conn.closed_at - sent_at <= _STALE_S
                    ):
                        raise _Stale
                    raise conn.error
                if conn.closed:
                    raise RemoteProtocolError("the connection was closed")
                await conn.wait(timeout_s)
        except BaseException:
            conn.close()
            raise
        return Response(conn, timeout_s)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None,
                )
        except TimeoutError as exc:
            raise ConnectError(
                f"connect to {self.host}:{self.port} timed out after {self.connect_timeout_s:g}s"
            ) from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        conn = protocol
        self._open.add(conn)
        return conn

    def _keep(self, conn: _Connection) -> None:
        if conn.idle:
            return  # already kept: never twice in the idle list
        if len(self._idle) >= self._max_idle:
            conn.close()
            return
        conn.idle = True
        self._idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        if conn.idle:  # idle ⇔ in the idle list
            conn.idle = False
            self._idle.remove(conn)

    async def close(self) -> None:
        """Close every connection, idle or not."""
        for conn in list(self._open):
            conn._fail(ConnectionAborted("the client was closed"))
        self._idle.clear()
