"""Every change to an account is an event in ACCOUNTS, on ``NS.accounts.<principal_id>.<type>``."""

from __future__ import annotations

from events.bus import Bus
from events.envelope import Envelope, Event


async def record(bus: Bus, principal_id: str, event: Event, actor: str) -> None:
    """Publish `event` about `principal_id`, done by `actor`."""
    await bus.publish(bus.names.accounts(principal_id, event.type), Envelope(event, actor=actor))
