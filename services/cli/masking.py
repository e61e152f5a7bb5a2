"""Which settings are secrets, and how `dim settings` (and an error about a setting) shows a
value: secrets masked, URLs without their user and password."""

from __future__ import annotations

import re

from pydantic import SecretStr

from events.connection import redact_url

MASK = "********"

# The settings whose values are secrets, by field: the token-signing keys, an upstream's API key,
# the NATS password. (DIM_NATS_CREDS, DIM_NATS_NKEY_SEED and DIM_NATS_TLS_KEY name files; the
# files are the secrets, and their paths are shown.) A SecretStr field is a secret too.
SECRET_SETTINGS = frozenset(
    {
        "jwt_secret",
        "jwt_private_key",
        "jwt_previous_secrets",
        "upstream_api_key",
        "nats_password",
    }
)

# What is a secret whatever field holds it: an NKey seed (a seed given where its file's path
# belongs), a PEM private key.
_SECRET_TEXT = re.compile(r"\bS[A-Z][A-Z2-7]{54,}\b|-----BEGIN [A-Z ]*PRIVATE KEY-----")


def is_secret(name: str, value: object = None) -> bool:
    """Whether setting `name`'s `value` must not be shown."""
    if name in SECRET_SETTINGS or isinstance(value, SecretStr):
        return True
    return value is not None and bool(_SECRET_TEXT.search(str(value)))


def shown(value: object, name: str = "") -> str:
    """A setting's value as text for people: a secret masked (empty when unset), a list
    comma-separated, a URL without user info."""
    if is_secret(name, value):
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return MASK if value else ""
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, str):
        return redact_url(value) if "://" in value else value
    return str(value)


def shown_json(value: object, name: str = "") -> object:
    """A setting's value as JSON for scripts: as `shown` masks it, else its plain JSON value."""
    from pathlib import Path

    if is_secret(name, value):
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return MASK if value else ""
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return value
