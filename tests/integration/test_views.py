"""Job views that cannot be stored: loud (log, metric, `/readyz` degraded), and stored again from
the log once they can be — never a silent dead letter that leaves a view wrong. Real NATS, a real
projector, its real HTTP endpoints."""

from __future__ import annotations

import httpx
from nats.js.api import StreamConfig

from events.bus import Bus
from events.history import read_events
from events.ids import new_id
from events.inference import Prompt
from events.job_log import submit
from events.work import MessageRejected
from projections.job_status import decode_view
from projections.reservations import Reservations, reservation_key
from services.health import Health
from services.settings import Settings
from tests.mesh import mesh, wait_terminal, wait_until


async def _max_view_bytes(bus: Bus, limit: int) -> None:
    """Set the largest value the jobs bucket takes (-1: no limit of its own)."""
    name = f"KV_{bus.names.bucket('jobs')}"
    config: StreamConfig = (await bus.js.stream_info(name)).config
    config.max_msg_size = limit
    await bus.js.update_stream(config)


async def test_a_view_that_cannot_be_stored_degrades_readiness_until_it_is_stored(
    bus: Bus, settings: Settings
) -> None:
    quota = settings.model_copy(update={"tenant_daily_tokens": 1000})
    async with mesh(quota) as m:
        projector = (await m.projector()).obj
        await m.orchestrator()
        await m.worker("w1")
        health = Health(quota, "projector")
        health.include(projector.metrics.registry)
        health.degraded_when(projector.metrics.degraded)
        health.serve()
        health.attach(bus)
        base = health.base_url
        try:
            async with httpx.AsyncClient(base_url=base) as http:
                assert (await http.get("/readyz")).status_code == 200
                await _max_view_bytes(bus, 300)  # smaller than any view
                job_id = new_id()  # a gateway reserved its tokens when it admitted it
                await Reservations(bus).reserve("default", job_id, 256)
                job = await submit(
                    bus, model="sim-small", prompt=Prompt(text="hello"), job_id=job_id
                )
                await wait_terminal(bus, job.job_id)

                async def degraded() -> bool:
                    r = await http.get("/readyz")
                    return r.status_code == 503 and job.job_id in r.json().get("jobs", {})

                await wait_until(degraded, what="readiness degraded by the failed view")
                body = (await http.get("/readyz")).json()
                assert body["status"] == "degraded" and body["views_behind"] >= 1
                metrics = (await http.get("/metrics")).text
                assert "dim_projector_view_write_failures_total" in metrics
                assert "dim_projector_views_behind 1.0" in metrics

                # its events are given up on (dead-lettered) while the cause lasts ...
                async def dead_lettered() -> bool:
                    records = read_events(bus, bus.names.dead_stream, bus.names.dead_all)
                    return any(
                        [
                            isinstance(e.data, MessageRejected)
                            and e.data.consumer.startswith("projector")
                            async for _, e in records
                        ]
                    )

                await wait_until(dead_lettered, timeout_s=30, what="the events dead-lettered")
                assert (await http.get("/readyz")).status_code == 503  # still loud
                await _max_view_bytes(bus, -1)  # ... then the cause goes away

                async def ready() -> bool:
                    return (await http.get("/readyz")).status_code == 200

                await wait_until(ready, timeout_s=30, what="the view stored again")
        finally:
            health.close()
        entry = await (await bus.bucket("jobs")).get(job.job_id)
        assert entry is not None and decode_view(entry.value).status == "completed"
        # the job's end, folded only by the rewrite, gave its quota reservation back
        held = await (await bus.bucket("reservations")).get(reservation_key("default", job_id))
        assert held is None
