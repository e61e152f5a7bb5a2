"""Run by test_nats_source.py in a pytest of its own: one round trip over the fixture's NATS."""

from __future__ import annotations

from events.bus import Bus


async def test_round_trip(bus: Bus) -> None:
    reply = await bus.nc.request("$JS.API.INFO", b"", timeout=5)
    assert b"memory" in reply.data
