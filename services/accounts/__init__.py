"""Accounts: users and their passwords, login sessions, API keys — stored in buckets, every
change an event in ACCOUNTS. No HTTP here: the gateway and the CLI both use it."""

from __future__ import annotations

from services.accounts.errors import (
    AccountError,
    EmailTaken,
    InvalidCredentials,
    InvalidRefreshToken,
    WeakPassword,
)
from services.accounts.keys import KeyRecord, create_key, live_keys, parse_key, read_key, revoke_key
from services.accounts.sessions import SessionRecord, close, login, refresh
from services.accounts.users import AccountRecord, email_key, register

__all__ = [
    "AccountError",
    "AccountRecord",
    "EmailTaken",
    "InvalidCredentials",
    "InvalidRefreshToken",
    "KeyRecord",
    "SessionRecord",
    "WeakPassword",
    "close",
    "create_key",
    "email_key",
    "live_keys",
    "login",
    "parse_key",
    "read_key",
    "refresh",
    "register",
    "revoke_key",
]
