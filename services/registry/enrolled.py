"""The enrolled bucket: for each node id, the key an admin admitted for it. Only the admin
writes it (`dim up` enrolls its workers' NATS identities at start); a node record is verified
when it is signed by its node's enrolled key (events/signing.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from events.bus import Bus
from events.records import EnrolledKey
from events.watched import WatchedBucket


async def enroll(bus: Bus, node_id: str, public_key: str, *, by: str) -> None:
    """Enroll `public_key` (an NKey user key) as node `node_id`'s, replacing any before."""
    bucket = await bus.bucket("enrolled")
    key = EnrolledKey(public_key=public_key, enrolled_at=datetime.now(UTC), by=by)
    await bucket.put(node_id, key.model_dump_json().encode())


def enrolled_keys(bus: Bus) -> WatchedBucket[EnrolledKey]:
    """The enrolled bucket mirrored in memory, node id → key (`start` it, then read `items`)."""
    return WatchedBucket(bus, bus.names.bucket("enrolled"), EnrolledKey)
