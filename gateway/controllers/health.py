"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get
from litestar.response import Response

from gateway.auth import GatewayDep
from services.process import settings_topology


class HealthController(Controller):
    """`/healthz` and `/readyz`, for load balancers and orchestrators."""

    path = ""
    tags = ["health"]

    @get("/healthz", operation_id="healthz", summary="The process is alive", exclude_from_auth=True)
    async def healthz(self) -> dict[str, str]:
        """Always 200 while the process serves HTTP."""
        return {"status": "ok"}

    @get("/readyz", operation_id="readyz", summary="Connected to NATS with every stream and bucket")
    async def readyz(self, gateway: GatewayDep) -> Response[dict[str, Any]]:
        """200 when NATS is connected and the streams and buckets exist; 503 and what is missing otherwise."""
        missing: list[str] = []
        if not gateway.bus.connected:
            missing.append("nats connection")
        else:
            topo = settings_topology(gateway.settings)
            names = [s.name for s in topo.streams] + [f"KV_{b.name}" for b in topo.buckets]
            for name in names:
                try:
                    if not await gateway.bus.stream_exists(name):
                        missing.append(name)
                except Exception:  # connection trouble while checking
                    missing.append(name)
        if missing:
            return Response({"status": "unavailable", "missing": missing}, status_code=503)
        return Response({"status": "ready"})
