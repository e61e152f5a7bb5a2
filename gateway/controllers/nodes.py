"""The node registry, for admins."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import Controller, get

from gateway.auth import GatewayDep, PrincipalDep, require_admin


class NodesController(Controller):
    """`/v1/nodes`."""

    path = "/v1/nodes"
    tags = ["admin"]

    @get(
        operation_id="listNodes",
        summary="Worker nodes: models, capacity, load, counters, signature verified (admins)",
    )
    async def list_nodes(
        self, gateway: GatewayDep, principal: PrincipalDep
    ) -> list[dict[str, Any]]:
        """Every node record, with whether it is live, its load, its uptime, and whether it is
        signed by the key enrolled for its node."""
        require_admin(principal)
        live = {n.node_id for n in gateway.nodes.live()}
        now = datetime.now(UTC)
        return [
            {
                **n.model_dump(mode="json"),
                "live": n.node_id in live,
                "load": round(n.in_flight / max(1, n.capacity), 4),
                "uptime_s": round((now - n.started_at).total_seconds(), 1),
                "verified": gateway.nodes.verified(n.node_id, gateway.enrolled.items),
            }
            for n in sorted(gateway.nodes.nodes.values(), key=lambda n: n.node_id)
        ]
