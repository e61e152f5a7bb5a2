"""A small live summary for the dashboard's charts, from what the gateway already measures.

Counters are cumulative (since this gateway process started), as in `/metrics`: the page
takes differences between polls for rates and means, so nothing is averaged twice. The queue
depth is what each model's workers last measured of its shared task consumer in JetStream
(pending messages, reported with every heartbeat) — the same figure that refuses new work
with 503 `overloaded` (`gateway/jobs.py: require_room`).
"""

from __future__ import annotations

import time
from typing import Any

from gateway.principal import Principal
from gateway.runtime import Gateway

# Requests a dashboard makes just by being open (its polls) and probes: not the traffic it shows.
QUIET_ROUTES = frozenset({"/v1/stats", "/metrics", "/healthz", "/readyz", "unmatched"})
_REQUESTS = "dim_gateway_requests"
_TTFT = "dim_gateway_time_to_first_token_seconds"
_IN_FLIGHT = "dim_gateway_requests_in_flight"


def snapshot(gw: Gateway, principal: Principal) -> dict[str, Any]:
    """Cumulative counters of this gateway and the queue depth of the models that serve the
    caller's tenant, now."""
    requests = errors = ttft_count = 0.0
    ttft_sum = in_flight = 0.0
    for family in gw.metrics.registry.collect():
        for sample in family.samples:
            if family.name == _REQUESTS and sample.name.endswith("_total"):
                if sample.labels.get("route") in QUIET_ROUTES:
                    continue
                requests += sample.value
                if str(sample.labels.get("status", "")).startswith("5"):
                    errors += sample.value
            elif family.name == _TTFT and sample.name == f"{_TTFT}_count":
                ttft_count += sample.value
            elif family.name == _TTFT and sample.name == f"{_TTFT}_sum":
                ttft_sum += sample.value
            elif family.name == _IN_FLIGHT:
                in_flight += sample.value
    nodes = [n for n in gw.nodes.live() if not n.tenants or principal.tenant in n.tenants]
    models = sorted({m for n in nodes for m in n.models})
    return {
        "at": round(time.time(), 3),
        "requests_total": int(requests),
        "errors_total": int(errors),
        "ttft": {"count": int(ttft_count), "sum_s": round(ttft_sum, 6)},
        "in_flight": int(in_flight),
        "queue": {m: gw.nodes.waiting(m) for m in models},
        "nodes_live": len(nodes),
    }
