"""The access log: one line per HTTP request the gateway answers (``DIM_ACCESS_LOG``, on by
default), on the ``dim.access`` logger.

A line holds the method, the path (never the query string, which may carry a secret), the
status, the duration, the request id, and the API key id and tenant once the caller is known;
never a header's value. Probes and scrapes that succeed are logged at DEBUG. In JSON logs (``DIM_LOG_FORMAT=json``) they are fields of their own.
"""

from __future__ import annotations

import logging
import time

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gateway.principal import Principal
from services.logs import FIELDS, request_id

log = logging.getLogger("dim.access")

# Probes and scrapes come every few seconds: their lines are DEBUG, not INFO.
QUIET = frozenset({"/healthz", "/readyz", "/metrics"})

PRINCIPAL = "dim.principal"  # the scope key of the authenticated caller (set by gateway.auth)


def access_log(app: ASGIApp) -> ASGIApp:
    """Middleware: log each HTTP request once it is answered (or has failed)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        t0 = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_logged)
        finally:
            _line(method, path, status, time.perf_counter() - t0, scope.get(PRINCIPAL))

    return middleware


def _line(method: str, path: str, status: int, seconds: float, principal: object) -> None:
    fields: dict[str, object] = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(seconds * 1000, 1),
        "request_id": request_id.get(),
    }
    who = ""
    if isinstance(principal, Principal):
        fields["tenant"] = principal.tenant
        fields["key_id"] = principal.key_id
        fields["principal"] = principal.principal_id
        who = f" tenant={principal.tenant} key={principal.key_id or '-'}"
    log.log(
        logging.DEBUG if path in QUIET and status < 400 else logging.INFO,
        "%s %s %d %.1fms id=%s%s",
        method,
        path,
        status,
        seconds * 1000,
        fields["request_id"],
        who,
        extra={FIELDS: fields},
    )
