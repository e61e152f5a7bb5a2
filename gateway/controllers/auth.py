"""Accounts and sessions: register, log in, refresh, log out, who am I, revoke, JWKS."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from litestar import Controller, Request, delete, get, post
from litestar.params import FromPath, JSONBody

from gateway.auth import GatewayDep, PrincipalDep, authenticate, gateway_of, require_admin
from gateway.errors import ApiError
from gateway.principal import Principal
from gateway.runtime import Gateway
from gateway.schemas.accounts import (
    LoginRequest,
    Me,
    RefreshRequest,
    Registered,
    RegisterRequest,
    TokenPair,
)
from services import accounts


def _pair(gateway: Gateway, session: accounts.SessionRecord, refresh_token: str) -> TokenPair:
    principal = Principal(
        session.principal_id, session.tenant, session.roles, session_id=session.session_id
    )
    return TokenPair(
        access_token=gateway.signer.issue(principal, session.session_id),
        expires_in=int(gateway.settings.access_ttl_s),
        refresh_token=refresh_token,
    )


async def _attempt(gateway: Gateway, request: Request[Any, Any, Any], account: str) -> None:
    """Login, refresh and registration are limited per account (an email, a session) and per
    client address (`DIM_AUTH_RPM`, and three times that per address), before any password is
    checked: guessing is slow, and a flood does not reach argon2."""
    address = request.client.host if request.client else "unknown"
    key = hashlib.sha256(account.strip().lower().encode()).hexdigest()[:32]
    await gateway.limiter.attempt(key, address, gateway.settings.auth_rpm)


class AuthController(Controller):
    """`/v1/auth`, `/v1/me`, `/v1/sessions`."""

    path = ""
    tags = ["auth"]

    @post(
        "/v1/auth/register", operation_id="register", summary="Create an account", status_code=201
    )
    async def register(
        self, request: Request[Any, Any, Any], data: JSONBody[RegisterRequest]
    ) -> Registered:
        """Admins add users to their tenant (any role); with open registration anyone may add a member."""
        gateway = gateway_of(request)
        await _attempt(gateway, request, data.email)
        header = request.headers.get("authorization")
        caller = authenticate(gateway, header) if header else None
        if caller is not None and caller.admin:
            tenant, by = caller.tenant, caller.principal_id
        elif gateway.settings.open_registration and data.role == "member":
            tenant, by = "default", "self"
        else:
            raise ApiError(
                403, "only an admin can register accounts here", code="registration_closed"
            )
        record = await accounts.register(
            gateway.bus,
            email=data.email,
            password=data.password,
            tenant=tenant,
            roles=(data.role,),
            by=by,
        )
        return Registered(
            principal_id=record.principal_id,
            email=record.email,
            tenant=record.tenant,
            roles=list(record.roles),
        )

    @post(
        "/v1/auth/login",
        operation_id="login",
        summary="Log in: an access token and a refresh token",
        status_code=200,
    )
    async def login(
        self, request: Request[Any, Any, Any], data: JSONBody[LoginRequest]
    ) -> TokenPair:
        """Open a session."""
        gateway = gateway_of(request)
        await _attempt(gateway, request, data.email)
        session, refresh = await accounts.login(
            gateway.bus,
            email=data.email,
            password=data.password,
            ttl_s=gateway.settings.refresh_ttl_s,
        )
        await _until_mirrored(gateway, session.session_id)
        return _pair(gateway, session, refresh)

    @post(
        "/v1/auth/refresh",
        operation_id="refresh",
        summary="A new access token (the refresh token rotates)",
        status_code=200,
    )
    async def refresh(
        self, request: Request[Any, Any, Any], data: JSONBody[RefreshRequest]
    ) -> TokenPair:
        """Rotate the refresh token and issue a new access token."""
        gateway = gateway_of(request)
        await _attempt(gateway, request, data.refresh_token.partition(".")[0])
        session, refresh = await accounts.refresh(
            gateway.bus,
            data.refresh_token,
            ttl_s=gateway.settings.refresh_ttl_s,
            max_s=gateway.settings.session_max_s,
        )
        return _pair(gateway, session, refresh)

    @post(
        "/v1/auth/logout",
        operation_id="logout",
        summary="End this session everywhere",
        status_code=204,
    )
    async def logout(self, gateway: GatewayDep, principal: PrincipalDep) -> None:
        """Its access and refresh tokens stop working on every gateway."""
        session = gateway.sessions.items.get(principal.session_id or "")
        if session is None:
            raise ApiError(
                400,
                "logout ends a login session; revoke an API key with DELETE /v1/keys/{id}",
                code="not_a_session",
            )
        await accounts.close(gateway.bus, session, reason="logout", actor=principal.principal_id)

    @get("/v1/me", operation_id="me", summary="Who is calling")
    async def me(self, principal: PrincipalDep) -> Me:
        """The caller's identity, tenant and roles."""
        return Me(
            principal_id=principal.principal_id,
            tenant=principal.tenant,
            roles=list(principal.roles),
            authenticated_by="session" if principal.session_id else "api_key",
            key_id=principal.key_id,
            session_id=principal.session_id,
        )

    @delete(
        "/v1/sessions/{session_id:str}",
        operation_id="revokeSession",
        summary="End a user's session (admins)",
        status_code=204,
    )
    async def revoke(
        self, session_id: FromPath[str], gateway: GatewayDep, principal: PrincipalDep
    ) -> None:
        """An admin ends any session of the tenant."""
        require_admin(principal)
        session = gateway.sessions.items.get(session_id)
        if session is None or session.tenant != principal.tenant:
            raise ApiError(
                404, f"no session {session_id!r}", code="session_not_found", param="session_id"
            )
        await accounts.close(
            gateway.bus,
            session,
            reason=f"revoked by {principal.principal_id}",
            actor=principal.principal_id,
        )

    @get(
        "/.well-known/jwks.json",
        operation_id="jwks",
        summary="Public keys that verify dim's access tokens",
    )
    async def jwks(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """JWKS (empty when tokens are HS256, whose key is secret)."""
        return gateway_of(request).signer.jwks()


async def _until_mirrored(gateway: Gateway, session_id: str) -> None:
    """Wait (briefly) until this gateway's mirror has the new session, so its token works at once."""
    for _ in range(100):
        if session_id in gateway.sessions.items:
            return
        await asyncio.sleep(0.01)
