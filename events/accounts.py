"""Account events, stored in the ACCOUNTS stream on ``NS.accounts.<principal_id>.<type>``."""

from __future__ import annotations

from typing import Literal

from events.envelope import Event, event_type

Role = Literal["admin", "member"]


@event_type
class KeyCreated(Event):
    """An API key was issued (the secret is never stored, only its hash in the keys bucket)."""

    type = "key.created"
    key_id: str
    principal_id: str
    tenant: str
    roles: tuple[Role, ...]
    name: str = ""
    daily_tokens: int = 0  # added with key budgets: its tokens per UTC day (0: no budget)


@event_type
class KeyRevoked(Event):
    """An API key was revoked; it stops working on every gateway at once."""

    type = "key.revoked"
    key_id: str
    principal_id: str
    by: str


@event_type
class UserRegistered(Event):
    """A user account was created (the password hash lives only in the accounts bucket)."""

    type = "user.registered"
    principal_id: str
    email: str
    tenant: str
    roles: tuple[Role, ...]
    by: str


@event_type
class SessionOpened(Event):
    """A user logged in."""

    type = "session.opened"
    session_id: str
    principal_id: str


@event_type
class SessionClosed(Event):
    """A session ended: logout, revocation by an admin, or a refresh-token reuse."""

    type = "session.closed"
    session_id: str
    principal_id: str
    reason: str
