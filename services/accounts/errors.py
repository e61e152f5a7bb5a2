"""What can go wrong with accounts, sessions and keys; the gateway maps each to its HTTP answer
(gateway/errors.py), the CLI prints the message."""

from __future__ import annotations

from events.errors import DimError


class AccountError(DimError):
    """A request about an account that cannot be granted; the message says why."""


class WeakPassword(AccountError, ValueError):
    """The password is too short."""


class EmailTaken(AccountError):
    """An account with this email exists."""


class InvalidCredentials(AccountError):
    """Wrong email or password (the message does not say which)."""


class InvalidRefreshToken(AccountError):
    """A refresh token that opens nothing: unknown, reused, expired, or its session changed."""


class PasswordChecksBusy(AccountError):
    """More password checks are waiting than the bounded pool takes: try again shortly."""
