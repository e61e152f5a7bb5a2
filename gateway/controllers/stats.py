"""`GET /v1/stats`: the dashboard's live figures (`gateway/stats.py`)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get

from gateway.auth import GatewayDep, PrincipalDep
from gateway.stats import snapshot


class StatsController(Controller):
    """`/v1/stats`."""

    path = "/v1/stats"
    tags = ["dashboard"]

    @get(
        operation_id="getStats",
        summary="This gateway's request, TTFT and in-flight counters and the models' queue depth",
    )
    async def stats(self, gateway: GatewayDep, principal: PrincipalDep) -> dict[str, Any]:
        """Cumulative counters since this gateway started (take differences between polls) and
        the tasks waiting for each model your tenant is served."""
        return snapshot(gateway, principal)
