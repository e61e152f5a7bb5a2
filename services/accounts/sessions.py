"""Login sessions: log in, refresh, log out — each an event in ACCOUNTS.

A session lives in the sessions bucket; its refresh token (shown once, stored hashed) rotates on
every refresh, and a reused one closes the session. Access tokens name their session, and every
gateway mirrors the sessions bucket, so deleting a session (logout, revoke) rejects its tokens
everywhere within moments."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict

from events.accounts import Role, SessionClosed, SessionOpened
from events.bus import Bus
from events.errors import WrongLastSequence
from events.ids import new_id
from events.subjects import is_id
from services.accounts.digest import matches, sha256_hex
from services.accounts.errors import InvalidRefreshToken
from services.accounts.journal import record as record_event
from services.accounts.users import AccountRecord, check_password


class SessionRecord(BaseModel):
    """One login in the sessions bucket."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    principal_id: str
    tenant: str
    roles: tuple[Role, ...]
    refresh_sha256: str
    created_at: datetime
    expires_at: datetime
    # the refresh tokens rotated away (the last few): one presented again was stolen or replayed
    used_sha256: tuple[str, ...] = ()


USED_KEPT = 8  # rotated refresh tokens remembered per session


async def login(bus: Bus, *, email: str, password: str, ttl_s: float) -> tuple[SessionRecord, str]:
    """Check the password and open a session; returns it and its refresh token."""
    account = await check_password(bus, email=email, password=password)
    return await _open(bus, account, ttl_s)


async def _open(bus: Bus, account: AccountRecord, ttl_s: float) -> tuple[SessionRecord, str]:
    session_id = new_id()
    secret = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    session = SessionRecord(
        session_id=session_id,
        principal_id=account.principal_id,
        tenant=account.tenant,
        roles=account.roles,
        refresh_sha256=sha256_hex(secret),
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
    )
    await (await bus.bucket("sessions")).put(session_id, session.model_dump_json().encode())
    await record_event(
        bus,
        account.principal_id,
        SessionOpened(session_id=session_id, principal_id=account.principal_id),
        account.principal_id,
    )
    return session, f"{session_id}.{secret}"


async def refresh(
    bus: Bus, refresh_token: str, *, ttl_s: float, max_s: float | None = None
) -> tuple[SessionRecord, str]:
    """Rotate a refresh token, extending the session by `ttl_s` but never past `max_s` after
    login. A token already rotated away, presented again, closes its session (it was stolen or
    replayed); any other wrong token is only refused (whoever knows a session id — it is in
    every access token — cannot end someone else's session)."""
    session_id, _, secret = refresh_token.partition(".")
    bucket = await bus.bucket("sessions")
    entry = await bucket.get(session_id) if is_id(session_id) else None
    if entry is None or not entry.value:
        raise InvalidRefreshToken("unknown or closed session; log in again")
    session = SessionRecord.model_validate_json(entry.value)
    if not matches(session.refresh_sha256, secret):
        if any(matches(used, secret) for used in session.used_sha256):
            await close(bus, session, reason="a refresh token was reused", actor="gateway")
            raise InvalidRefreshToken("this refresh token was already used; the session is closed")
        raise InvalidRefreshToken("invalid refresh token")
    now = datetime.now(UTC)
    if session.expires_at < now:
        raise InvalidRefreshToken("the session has expired; log in again")
    secret = secrets.token_urlsafe(32)
    expires = now + timedelta(seconds=ttl_s)
    if max_s is not None:
        expires = min(expires, session.created_at + timedelta(seconds=max_s))
    rotated = session.model_copy(
        update={
            "refresh_sha256": sha256_hex(secret),
            "expires_at": expires,
            "used_sha256": (*session.used_sha256, session.refresh_sha256)[-USED_KEPT:],
        }
    )
    try:
        await bucket.update(session_id, rotated.model_dump_json().encode(), entry.revision)
    except WrongLastSequence:
        raise InvalidRefreshToken("the session changed meanwhile; log in again") from None
    return rotated, f"{session_id}.{secret}"


async def close(bus: Bus, session: SessionRecord, *, reason: str, actor: str) -> None:
    """End a session: its access and refresh tokens stop working on every gateway."""
    await (await bus.bucket("sessions")).delete(session.session_id)
    event = SessionClosed(
        session_id=session.session_id, principal_id=session.principal_id, reason=reason
    )
    await record_event(bus, session.principal_id, event, actor)
