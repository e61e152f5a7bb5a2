"""Tracing setup: where a process's spans go (``DIM_OTEL_EXPORTER``: none, console or otlp).

Trace context crosses process boundaries in NATS headers (`events.bus` injects ``traceparent``
on every publish; consumers continue from it), so one trace shows a request from the gateway
through the orchestrator and the worker to the engine.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from services.settings import Settings


def setup_tracing(settings: Settings, service: str) -> None:
    """Install a tracer provider exporting as the settings say; none leaves tracing a no-op."""
    if settings.otel_exporter == "none":
        return
    exporter: SpanExporter
    if settings.otel_exporter == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otel_endpoint or None)
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": f"dim-{service}", "service.namespace": settings.namespace}
        )
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
