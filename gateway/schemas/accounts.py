"""Schemas of the accounts API: keys, registration, login, tokens, the caller."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from events.accounts import Role


class KeyRequest(BaseModel):
    """`POST /v1/keys`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=100)
    role: Role = "member"
    principal_id: str | None = Field(default=None, description="admins may issue keys for others")
    daily_tokens: int | None = Field(
        default=None,
        ge=1,
        le=10**15,
        description="the key's budget of tokens per UTC day, reserved at admission like the "
        "tenant's quota (null: no budget of its own)",
    )


class KeyOut(BaseModel):
    """A key without its secret."""

    key_id: str
    principal_id: str
    tenant: str
    roles: list[str]
    name: str
    created_at: datetime
    daily_tokens: int | None = Field(
        default=None, description="its budget of tokens per UTC day (null: none)"
    )


class KeyIssued(KeyOut):
    """A new key, with the secret: shown this once."""

    key: str


class RegisterRequest(BaseModel):
    """`POST /v1/auth/register`."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
    password: str = Field(min_length=1, max_length=1024)
    role: Role = "member"


class Registered(BaseModel):
    """A new account."""

    principal_id: str
    email: str
    tenant: str
    roles: list[str]


class LoginRequest(BaseModel):
    """`POST /v1/auth/login`."""

    email: str
    password: str


class RefreshRequest(BaseModel):
    """`POST /v1/auth/refresh`."""

    refresh_token: str


class TokenPair(BaseModel):
    """An access token (short-lived JWT) and the session's refresh token (rotates on use)."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    refresh_token: str


class Me(BaseModel):
    """The caller."""

    principal_id: str
    tenant: str
    roles: list[str]
    authenticated_by: Literal["api_key", "session"]
    key_id: str | None = None
    session_id: str | None = None
