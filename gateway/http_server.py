"""The gateway's HTTP/1.1 protocol: uvicorn's, with the receive timeouts it lacks.

uvicorn bounds idle keep-alive connections and the number of connections, but not how long a
client may take to send a request: 300 connections trickling header bytes were all still held
after 40 s. Here a request's line and headers must arrive within `header_timeout_s` (counted
from the connection, or from the first byte of the next request on a kept-alive one), and its
body within `body_timeout_s` of its headers; past either, the connection is closed. The response
may take as long as it needs (a stream runs for minutes); a WebSocket upgrade leaves these
bounds behind (its own are the pings and the first-message deadline).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)


class BoundedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body receive deadlines."""

    header_timeout_s = 10.0
    body_timeout_s = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s, "its request headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # the next request on a kept-alive connection
            self._arm(self.header_timeout_s, "its request headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.parser.should_upgrade() and self._should_upgrade():
            self._disarm()  # a WebSocket from here on
        else:
            self._arm(self.body_timeout_s, "its request body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow, what, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, what: str, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        who = "%s:%d" % self.client if self.client else "a client"  # noqa: UP031
        log.info("closing %s's connection: %s did not arrive within %gs", who, what, seconds)
        self.transport.close()


def bounded_http(header_timeout_s: float, body_timeout_s: float) -> type[BoundedHttp]:
    """The protocol class for uvicorn's `http=`, with these deadlines."""
    return type(
        "BoundedHttp",
        (BoundedHttp,),
        {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s},
    )
