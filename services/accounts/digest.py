"""The one hash of stored secrets: refresh tokens, API keys and email keys are kept as SHA-256.

Those secrets are 32 random bytes, so a fast hash is enough; passwords use a memory-hard KDF
instead (`services.accounts.users`)."""

from __future__ import annotations

import hashlib
import hmac


def sha256_hex(secret: str) -> str:
    """The hex SHA-256 of `secret`."""
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(stored_sha256: str, secret: str) -> bool:
    """Whether `secret` hashes to `stored_sha256`, compared in constant time."""
    return hmac.compare_digest(stored_sha256, sha256_hex(secret))
