"""API keys: issued once, stored hashed in the keys bucket, checked from a watched local copy.

A key reads ``dim_<key id>_<64 hex>``. Only the SHA-256 of the secret is stored (the secret is
32 random bytes, so a fast hash is enough; passwords use a memory-hard KDF instead). Every
gateway keeps the bucket in memory through a KV watch, so checking a key costs no round trip
and a revocation takes effect on every replica as soon as the deletion reaches it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

from events.accounts import KeyCreated, KeyRevoked, Role
from events.bus import Bus
from events.envelope import Envelope
from events.ids import new_id
from events.watched import WatchedBucket
from gateway.principal import Principal

_KEY = re.compile(r"^dim_([0-9A-HJKMNP-TV-Z]{26})_([0-9a-f]{64})$")


class KeyRecord(BaseModel):
    """What the keys bucket holds for one key."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    principal_id: str
    tenant: str
    roles: tuple[Role, ...]
    name: str = ""
    secret_sha256: str
    created_at: datetime


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_key(
    bus: Bus, *, principal_id: str, tenant: str, roles: tuple[Role, ...], name: str = "", actor: str
) -> tuple[KeyRecord, str]:
    """Issue a key: record ``key.created`` and store its hash; returns the record and the key."""
    key_id, secret = new_id(), secrets.token_hex(32)
    record = KeyRecord(
        key_id=key_id,
        principal_id=principal_id,
        tenant=tenant,
        roles=roles,
        name=name,
        secret_sha256=_digest(secret),
        created_at=datetime.now(UTC),
    )
    event = KeyCreated(
        key_id=key_id, principal_id=principal_id, tenant=tenant, roles=roles, name=name
    )
    await bus.publish(bus.names.accounts(principal_id, event.type), Envelope(event, actor=actor))
    kv = await bus.js.key_value(bus.names.bucket("keys"))
    await kv.put(key_id, record.model_dump_json().encode())
    return record, f"dim_{key_id}_{secret}"


async def revoke_key(bus: Bus, record: KeyRecord, *, by: str) -> None:
    """Record ``key.revoked`` and delete the key from the bucket."""
    event = KeyRevoked(key_id=record.key_id, principal_id=record.principal_id, by=by)
    await bus.publish(
        bus.names.accounts(record.principal_id, event.type), Envelope(event, actor=by)
    )
    kv = await bus.js.key_value(bus.names.bucket("keys"))
    await kv.delete(record.key_id)


class KeyRing(WatchedBucket[KeyRecord]):
    """Every live key, kept current by a KV watch."""

    def __init__(self, bus: Bus) -> None:
        super().__init__(bus, bus.names.bucket("keys"), KeyRecord)

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a presented key, or None if it is not a live key."""
        m = _KEY.match(token)
        if m is None:
            return None
        record = self.items.get(m.group(1))
        if record is None or not hmac.compare_digest(record.secret_sha256, _digest(m.group(2))):
            return None
        return Principal(record.principal_id, record.tenant, record.roles, key_id=record.key_id)
