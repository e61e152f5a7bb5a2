"""WebSocket tickets: short-lived, single-use stand-ins for a key or token, for browsers.

A browser cannot set `Authorization` on a WebSocket, and a key in the URL ends up in access
logs. `POST /v1/ws-tickets` (authenticated as usual) returns a ticket the page sends as the
subprotocols ``dim.ticket, <ticket>``. A ticket is a JWT signed with the access tokens' key
under an audience of its own (neither passes for the other), names its caller, lives
`DIM_WS_TICKET_TTL_S`, and opens one socket on any replica: redeeming it adds one to a counter
named after it in the rate-limit counter stream (`gateway/limits.py`), which NATS keeps for
longer than any ticket lives, so a second use is refused wherever it is tried.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

from events.ids import new_id
from gateway.errors import ApiError
from gateway.principal import Principal
from gateway.runtime import Gateway

AUDIENCE = "dim-ws-ticket"
_ISSUER = "dim"


def issue(gw: Gateway, principal: Principal) -> tuple[str, int]:
    """A new ticket for `principal` and its lifetime in whole seconds."""
    signer, ttl = gw.signer, max(1, int(gw.settings.ws_ticket_ttl_s))
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": _ISSUER,
        "aud": AUDIENCE,
        "sub": principal.principal_id,
        "tid": principal.tenant,
        "roles": list(principal.roles),
        "jti": new_id(),
        "iat": now,
        "exp": now + ttl,
    }
    if principal.key_id:
        claims["kid"] = principal.key_id
    if principal.session_id:
        claims["sid"] = principal.session_id
    token = jwt.encode(
        claims, signer.signing_key, algorithm=signer.algorithm, headers={"kid": signer.key_id}
    )
    return token, ttl


def _claims(gw: Gateway, ticket: str) -> dict[str, Any]:
    try:
        claims = gw.signer.decode(
            ticket, audience=AUDIENCE, issuer=_ISSUER, require=["exp", "sub", "tid", "jti"]
        )
    except jwt.ExpiredSignatureError:
        raise ApiError(
            401, "the WebSocket ticket has expired; ask for a new one", code="ticket_expired"
        ) from None
    except jwt.PyJWTError:
        raise ApiError(
            401,
            "invalid WebSocket ticket: send one POST /v1/ws-tickets returned",
            code="invalid_ticket",
        ) from None
    return claims


async def redeem(gw: Gateway, ticket: str) -> Principal:
    """The caller a ticket names, once; an `ApiError` 401 for a bad, expired or used ticket, or
    one whose key was revoked or whose session ended since."""
    claims = _claims(gw, ticket)
    key_id, session_id = claims.get("kid"), claims.get("sid")
    if key_id is not None and str(key_id) not in gw.keys.items:
        raise ApiError(401, "the ticket's API key has been revoked", code="invalid_api_key")
    if session_id is not None and str(session_id) not in gw.sessions.items:
        raise ApiError(401, "the ticket's session has ended; log in again", code="session_ended")
    uses = await gw.bus.increment(gw.bus.names.rate(f"ws-ticket-{claims['jti']}", 0))
    if uses > 1:
        raise ApiError(
            401, "the WebSocket ticket was already used; ask for a new one", code="ticket_used"
        )
    return Principal(
        str(claims["sub"]),
        str(claims["tid"]),
        tuple(claims.get("roles", ())),
        key_id=None if key_id is None else str(key_id),
        session_id=None if session_id is None else str(session_id),
    )
