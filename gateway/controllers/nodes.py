"""The node registry, for admins."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get

from gateway.auth import GatewayDep, PrincipalDep, require_admin


class NodesController(Controller):
    """`/v1/nodes`."""

    path = "/v1/nodes"
    tags = ["admin"]

    @get(
        operation_id="listNodes", summary="Worker nodes: models, capacity, load, counters (admins)"
    )
    async def list_nodes(
        self, gateway: GatewayDep, principal: PrincipalDep
    ) -> list[dict[str, Any]]:
        """Every node record, with whether it is live."""
        require_admin(principal)
        live = {n.node_id for n in gateway.nodes.live()}
        return [
            {**n.model_dump(mode="json"), "live": n.node_id in live}
            for n in sorted(gateway.nodes.nodes.values(), key=lambda n: n.node_id)
        ]
