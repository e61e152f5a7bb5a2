"""API keys as the gateway checks them: from a watched local copy of the keys bucket.

Every gateway keeps the bucket in memory through a KV watch, so checking a key costs no round
trip and a revocation takes effect on every replica as soon as the deletion reaches it. Issuing
and revoking keys is `services.accounts.keys`."""

from __future__ import annotations

from events.bus import Bus
from events.watched import WatchedBucket
from gateway.principal import Principal
from services.accounts.keys import KeyRecord, parse_key


class KeyRing(WatchedBucket[KeyRecord]):
    """Every live key, kept current by a KV watch."""

    def __init__(self, bus: Bus) -> None:
        super().__init__(bus, bus.names.bucket("keys"), KeyRecord)

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a presented key, or None if it is not a live key."""
        parsed = parse_key(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        record = self.items.get(key_id)
        if record is None or not record.opened_by(secret):
            return None
        return Principal(record.principal_id, record.tenant, record.roles, key_id=record.key_id)
