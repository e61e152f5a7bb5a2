"""API keys: issued once, stored hashed in the keys bucket.

A key reads ``dim_<key id>_<64 hex>``. Only the SHA-256 of the secret is stored. Every gateway
keeps the bucket in memory through a KV watch (gateway.keys.KeyRing), so checking a key costs no
round trip and a revocation takes effect on every replica as soon as the deletion reaches it."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

from events.accounts import KeyCreated, KeyRevoked, Role
from events.bus import Bus
from events.ids import new_id
from events.watched import WatchedBucket
from services.accounts.digest import matches, sha256_hex
from services.accounts.journal import record as record_event

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
    daily_tokens: int = 0  # added with key budgets: tokens it may use per UTC day (0: no budget)

    def opened_by(self, secret: str) -> bool:
        """Whether `secret` is this key's secret."""
        return matches(self.secret_sha256, secret)


def parse_key(token: str) -> tuple[str, str] | None:
    """The key id and secret of a presented key, or None if `token` is not shaped like one."""
    m = _KEY.match(token)
    return (m.group(1), m.group(2)) if m is not None else None


async def create_key(
    bus: Bus,
    *,
    principal_id: str,
    tenant: str,
    roles: tuple[Role, ...],
    name: str = "",
    actor: str,
    daily_tokens: int = 0,
) -> tuple[KeyRecord, str]:
    """Issue a key: record ``key.created`` and store its hash; returns the record and the key.
    `daily_tokens`: the key's budget of tokens per UTC day (0: none, the tenant's quota only)."""
    if daily_tokens < 0:
        raise ValueError(f"a key's daily tokens are 0 (no budget) or more, not {daily_tokens}")
    key_id, secret = new_id(), secrets.token_hex(32)
    record = KeyRecord(
        key_id=key_id,
        principal_id=principal_id,
        tenant=tenant,
        roles=roles,
        name=name,
        secret_sha256=sha256_hex(secret),
        created_at=datetime.now(UTC),
        daily_tokens=daily_tokens,
    )
    event = KeyCreated(
        key_id=key_id,
        principal_id=principal_id,
        tenant=tenant,
        roles=roles,
        name=name,
        daily_tokens=daily_tokens,
    )
    await record_event(bus, principal_id, event, actor)
    await (await bus.bucket("keys")).put(key_id, record.model_dump_json().encode())
    return record, f"dim_{key_id}_{secret}"


async def revoke_key(bus: Bus, record: KeyRecord, *, by: str) -> None:
    """Record ``key.revoked`` and delete the key from the bucket."""
    event = KeyRevoked(key_id=record.key_id, principal_id=record.principal_id, by=by)
    await record_event(bus, record.principal_id, event, by)
    await (await bus.bucket("keys")).delete(record.key_id)


async def read_key(bus: Bus, key_id: str) -> KeyRecord | None:
    """The live key `key_id`, or None."""
    entry = await (await bus.bucket("keys")).get(key_id)
    return KeyRecord.model_validate_json(entry.value) if entry is not None else None


async def live_keys(bus: Bus) -> list[KeyRecord]:
    """Every live key, read once from the bucket, by key id."""
    ring = WatchedBucket(bus, bus.names.bucket("keys"), KeyRecord)
    await ring.start()
    await ring.stop()
    return sorted(ring.items.values(), key=lambda k: k.key_id)
