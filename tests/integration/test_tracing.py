"""One trace from the gateway through the orchestrator and the worker to the engine."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import uvicorn
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from events.bus import Bus
from gateway.app import create_app
from services.accounts.keys import create_key
from services.nats_server import free_port
from services.settings import Settings
from tests.mesh import mesh, wait_until

EXPORTER = InMemorySpanExporter()


def _install_provider() -> None:
    # A process has one global tracer provider; install ours once (dim's tracers are proxies
    # that follow whichever provider is installed).
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)


@pytest.mark.parametrize("at_door", [False, True], ids=["orchestrator-plans", "door-plans"])
async def test_one_trace_spans_gateway_orchestrator_worker_and_engine(
    bus: Bus, settings: Settings, at_door: bool
) -> None:
    # Planned by the orchestrator, the work goes gateway -> orchestrator -> worker -> engine;
    # planned at the door, the gateway sends it (gateway -> worker -> engine) and the
    # orchestrator's folding of the job hangs off the gateway's span: one trace either way.
    _install_provider()
    EXPORTER.clear()
    port = free_port()
    # The exporter setting turns the gateway's server spans on; the test's provider collects them.
    s = settings.model_copy(
        update={"gateway_port": port, "otel_exporter": "console", "plan_at_door": at_door}
    )
    _, key = await create_key(
        bus, principal_id="tess", tenant="acme", roles=("member",), actor="test"
    )
    async with mesh(s) as m:
        await m.orchestrator()
        await m.worker("w1")
        server = uvicorn.Server(
            uvicorn.Config(create_app(s), host="127.0.0.1", port=port, log_level="warning")
        )
        serving = asyncio.create_task(server.serve())
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

                async def up() -> bool:
                    if not server.started:
                        return False
                    r = await http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
                    return bool(r.json()["data"])

                await wait_until(up, what="the gateway")
                EXPORTER.clear()
                r = await http.post(
                    "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={
                        "model": "sim-small",
                        "messages": [{"role": "user", "content": "trace me"}],
                    },
                )
                assert r.status_code == 200
                await asyncio.sleep(0.3)  # let the orchestrator fold the last events
        finally:
            server.should_exit = True
            await serving
    spans = EXPORTER.get_finished_spans()
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    server_spans = [
        sp for sp in spans if sp.kind == trace.SpanKind.SERVER and "/v1/chat/completions" in sp.name
    ]
    assert server_spans, sorted(by_name)
    trace_id = server_spans[0].context.trace_id
    for name in ("orchestrator.advance", "worker.task", "engine.generate"):
        assert any(sp.context.trace_id == trace_id for sp in by_name.get(name, [])), (
            name,
            sorted(by_name),
        )
    ids = {sp.context.span_id: sp for sp in spans}
    engine = next(sp for sp in by_name["engine.generate"] if sp.context.trace_id == trace_id)
    worker = ids[engine.parent.span_id]  # type: ignore[union-attr]
    assert worker.name == "worker.task"
    sender = ids[worker.parent.span_id]  # type: ignore[union-attr]
    if at_door:
        assert sender.context.span_id == server_spans[0].context.span_id, sender.name
    else:
        assert sender.name == "orchestrator.advance"
    assert engine.attributes is not None and engine.attributes["gen_ai.usage.output_tokens"] > 0
