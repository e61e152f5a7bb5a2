"""What one gateway process holds while it runs: the NATS connection and its live views."""

from __future__ import annotations

from dataclasses import dataclass

from events.bus import Bus
from gateway.keys import KeyRing
from services.process import connect, ensure_topology
from services.registry.live import LiveNodes
from services.settings import Settings


@dataclass
class Gateway:
    """The gateway's connection to the mesh; kept on ``app.state.gateway``."""

    settings: Settings
    bus: Bus
    nodes: LiveNodes
    keys: KeyRing

    @classmethod
    async def start(cls, settings: Settings) -> Gateway:
        """Connect, provision, and load the node registry and API keys."""
        bus = await connect(settings, "dim-gateway")
        await ensure_topology(bus, settings)
        nodes = LiveNodes(bus, settings.node_ttl_s)
        keys = KeyRing(bus)
        await nodes.start()
        await keys.start()
        return cls(settings, bus, nodes, keys)

    async def stop(self) -> None:
        """Stop the watches and close the connection."""
        await self.keys.stop()
        await self.nodes.stop()
        await self.bus.close()
