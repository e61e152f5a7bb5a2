"""Who opened a WebSocket: the `Authorization` header, or a subprotocol a browser can send.

Browsers cannot set headers on a WebSocket, so the caller may offer, in order,
``Sec-WebSocket-Protocol: dim.bearer, <key or access token>`` or
``Sec-WebSocket-Protocol: dim.ticket, <ticket>`` (`gateway/ws_tickets.py`). The gateway
echoes back only the protocol's name, never the secret after it. Nothing is read from the URL:
URLs end up in access logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import WebSocket

from gateway import ws_tickets
from gateway.auth import authenticate
from gateway.errors import ApiError
from gateway.principal import Principal
from gateway.runtime import Gateway

BEARER = "dim.bearer"
TICKET = "dim.ticket"


@dataclass(frozen=True, slots=True)
class Offer:
    """What the client offered in `Sec-WebSocket-Protocol`: the dim protocol (to echo) and
    the secret that followed it."""

    protocol: str | None = None
    secret: str | None = None


def offer_of(socket: WebSocket[Any, Any, Any]) -> Offer:
    """The first dim protocol the client offered, and the value right after it."""
    offered = [str(p).strip() for p in socket.scope.get("subprotocols", [])]
    for i, name in enumerate(offered):
        if name in (BEARER, TICKET):
            secret = offered[i + 1] if i + 1 < len(offered) else None
            return Offer(name, secret or None)
    return Offer()


async def socket_principal(
    gw: Gateway, socket: WebSocket[Any, Any, Any], offer: Offer
) -> Principal:
    """The caller: by its `Authorization` header if it sent one, else by what it offered;
    an `ApiError` 401 that says what to send otherwise."""
    header = socket.headers.get("authorization")
    if header:
        return authenticate(gw, header)
    if offer.protocol is not None and offer.secret is None:
        raise ApiError(
            401,
            f"the subprotocol '{offer.protocol}' must be followed by its secret: "
            f"'{offer.protocol}, <secret>'",
            code="missing_api_key",
        )
    if offer.protocol == BEARER and offer.secret is not None:
        return authenticate(gw, f"Bearer {offer.secret}")
    if offer.protocol == TICKET and offer.secret is not None:
        return await ws_tickets.redeem(gw, offer.secret)
    raise ApiError(
        401,
        "missing credentials: send 'Authorization: Bearer <key>', or the subprotocols "
        "'dim.bearer, <key>' or 'dim.ticket, <ticket>' (POST /v1/ws-tickets)",
        code="missing_api_key",
    )
