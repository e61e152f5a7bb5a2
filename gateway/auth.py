"""Authentication: `Authorization: Bearer <key>`, exactly as OpenAI clients send it."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.di import NamedDependency

from gateway.access_log import PRINCIPAL
from gateway.errors import ApiError
from gateway.principal import Principal
from gateway.runtime import Gateway
from gateway.tokens import TokenError

GatewayDep = NamedDependency[Gateway]
PrincipalDep = NamedDependency[Principal]


def gateway_of(request: Request[Any, Any, Any]) -> Gateway:
    """The running gateway."""
    gw: Gateway = request.app.state.gateway
    return gw


async def provide_gateway(request: Request[Any, Any, Any]) -> Gateway:
    """Dependency: the running gateway."""
    return gateway_of(request)


EXTRA_HEADERS = "dim.extra_headers"


async def provide_principal(request: Request[Any, Any, Any], gateway: GatewayDep) -> Principal:
    """Dependency: the authenticated caller (401 otherwise), counted against its rate limit.

    It takes the `gateway` dependency rather than reading the app state itself so that Litestar
    resolves the two one after the other: dependencies of the same depth are resolved
    concurrently, in an anyio task group of their own, which costs two tasks per request for
    no gain (measured in docs/benchmarks.md)."""
    principal = authenticate(gateway, request.headers.get("authorization"))
    request.scope[PRINCIPAL] = principal  # type: ignore[literal-required]  # for the access log
    state = await gateway.limiter.hit(principal)
    if state is not None:
        request.scope.setdefault(EXTRA_HEADERS, {}).update(state.headers())  # type: ignore[misc]
    return principal


def authenticate(gateway: Gateway, header: str | None) -> Principal:
    """The caller an Authorization header names, or an `ApiError` 401 that says what to send."""
    if not header:
        raise ApiError(
            401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key"
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401, "malformed Authorization header: expected 'Bearer <key>'", code="invalid_api_key"
        )
    token = token.strip()
    if token.count(".") == 2:
        return _from_access_token(gateway, token)
    principal = gateway.keys.authenticate(token)
    if principal is None:
        raise ApiError(401, "invalid or revoked API key", code="invalid_api_key")
    return principal


def _from_access_token(gateway: Gateway, token: str) -> Principal:
    try:
        claims = gateway.signer.verify(token)
    except TokenError as exc:
        raise ApiError(401, str(exc), code="invalid_token") from None
    session = gateway.sessions.items.get(str(claims["sid"]))
    if session is None:
        raise ApiError(
            401, "the session has ended (logged out or revoked); log in again", code="session_ended"
        )
    return Principal(
        session.principal_id, session.tenant, session.roles, session_id=session.session_id
    )


def require_admin(principal: Principal) -> None:
    """Raise 403 unless the caller is an admin."""
    if not principal.admin:
        raise ApiError(403, "this endpoint is for admins", code="admin_only")
