"""User accounts and sessions: register, log in, refresh, log out — each an event in ACCOUNTS.

Accounts live in the accounts bucket keyed by a hash of the email, passwords hashed with
argon2id (memory-hard). A session lives in the sessions bucket; its refresh token (shown once,
stored hashed) rotates on every refresh, and a reused one closes the session. Access tokens name
their session, and every gateway mirrors the sessions bucket, so deleting a session (logout,
revoke) rejects its tokens everywhere within moments.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import BaseModel, ConfigDict

from events.accounts import Role, SessionClosed, SessionOpened, UserRegistered
from events.bus import Bus
from events.envelope import Envelope, Event
from events.ids import new_id
from gateway.errors import ApiError
from gateway.principal import Principal

_hasher = PasswordHasher()
# Verifying against this when the email is unknown keeps login time the same either way.
_DUMMY = _hasher.hash("not a password of anyone")


class AccountRecord(BaseModel):
    """One user in the accounts bucket."""

    model_config = ConfigDict(frozen=True)

    principal_id: str
    email: str
    password_hash: str
    tenant: str
    roles: tuple[Role, ...]
    created_at: datetime

    @property
    def principal(self) -> Principal:
        """The account as a caller."""
        return Principal(self.principal_id, self.tenant, self.roles)


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


def email_key(email: str) -> str:
    """The accounts-bucket key of an email address (case-insensitive)."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def _record(bus: Bus, principal_id: str, event: Event, actor: str) -> None:
    await bus.publish(bus.names.accounts(principal_id, event.type), Envelope(event, actor=actor))


async def register(
    bus: Bus, *, email: str, password: str, tenant: str, roles: tuple[Role, ...], by: str
) -> AccountRecord:
    """Create an account; 409 if the email is taken."""
    if len(password) < 8:
        raise ApiError(
            400,
            "the password must have at least 8 characters",
            code="weak_password",
            param="password",
        )
    record = AccountRecord(
        principal_id=f"u-{new_id()}",
        email=email.strip(),
        password_hash=_hasher.hash(password),
        tenant=tenant,
        roles=roles,
        created_at=datetime.now(UTC),
    )
    kv = await bus.js.key_value(bus.names.bucket("accounts"))
    try:
        await kv.create(email_key(email), record.model_dump_json().encode())
    except KeyWrongLastSequenceError:
        raise ApiError(
            409, "an account with this email exists", code="email_taken", param="email"
        ) from None
    event = UserRegistered(
        principal_id=record.principal_id, email=record.email, tenant=tenant, roles=roles, by=by
    )
    await _record(bus, record.principal_id, event, by)
    return record


async def login(bus: Bus, *, email: str, password: str, ttl_s: float) -> tuple[SessionRecord, str]:
    """Check the password and open a session; returns it and its refresh token."""
    kv = await bus.js.key_value(bus.names.bucket("accounts"))
    try:
        entry = await kv.get(email_key(email))
        account = AccountRecord.model_validate_json(entry.value or b"")
    except KeyNotFoundError:
        account = None
    try:
        _hasher.verify(account.password_hash if account else _DUMMY, password)
        ok = account is not None
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok or account is None:
        raise ApiError(401, "wrong email or password", code="invalid_credentials")
    return await _open(bus, account.principal, ttl_s)


async def _open(bus: Bus, principal: Principal, ttl_s: float) -> tuple[SessionRecord, str]:
    session_id = new_id()
    secret = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    session = SessionRecord(
        session_id=session_id,
        principal_id=principal.principal_id,
        tenant=principal.tenant,
        roles=principal.roles,
        refresh_sha256=_sha(secret),
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
    )
    kv = await bus.js.key_value(bus.names.bucket("sessions"))
    await kv.put(session_id, session.model_dump_json().encode())
    await _record(
        bus,
        principal.principal_id,
        SessionOpened(session_id=session_id, principal_id=principal.principal_id),
        principal.principal_id,
    )
    return session, f"{session_id}.{secret}"


async def refresh(bus: Bus, refresh_token: str, *, ttl_s: float) -> tuple[SessionRecord, str]:
    """Rotate a refresh token; a token used twice closes its session (it was stolen or replayed)."""
    session_id, _, secret = refresh_token.partition(".")
    kv = await bus.js.key_value(bus.names.bucket("sessions"))
    try:
        entry = await kv.get(session_id) if session_id.isalnum() else None
    except KeyNotFoundError:
        entry = None
    if entry is None or not entry.value:
        raise ApiError(401, "unknown or closed session; log in again", code="invalid_refresh_token")
    session = SessionRecord.model_validate_json(entry.value)
    if not hmac.compare_digest(session.refresh_sha256, _sha(secret)):
        await close(bus, session, reason="a refresh token was reused", actor="gateway")
        raise ApiError(
            401,
            "this refresh token was already used; the session is closed",
            code="invalid_refresh_token",
        )
    if session.expires_at < datetime.now(UTC):
        raise ApiError(401, "the session has expired; log in again", code="invalid_refresh_token")
    secret = secrets.token_urlsafe(32)
    rotated = session.model_copy(
        update={
            "refresh_sha256": _sha(secret),
            "expires_at": datetime.now(UTC) + timedelta(seconds=ttl_s),
        }
    )
    try:
        await kv.update(session_id, rotated.model_dump_json().encode(), last=entry.revision)
    except KeyWrongLastSequenceError:
        raise ApiError(
            401, "the session changed meanwhile; log in again", code="invalid_refresh_token"
        ) from None
    return rotated, f"{session_id}.{secret}"


async def close(bus: Bus, session: SessionRecord, *, reason: str, actor: str) -> None:
    """End a session: its access and refresh tokens stop working on every gateway."""
    kv = await bus.js.key_value(bus.names.bucket("sessions"))
    await kv.delete(session.session_id)
    event = SessionClosed(
        session_id=session.session_id, principal_id=session.principal_id, reason=reason
    )
    await _record(bus, session.principal_id, event, actor)
