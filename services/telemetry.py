"""Tracing setup: where a process's spans go, by the standard OpenTelemetry variables.

`Settings.trace_exporters` says which exporters (``DIM_OTEL_EXPORTER`` over
``OTEL_TRACES_EXPORTER``; docs/metrics.md has the precedence); the OTLP transport is
``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` or ``OTEL_EXPORTER_OTLP_PROTOCOL`` (http/protobuf by
default, or grpc). The exporters read their endpoint, headers, timeout, compression and TLS
variables themselves; the resource reads ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME``,
and only when neither names the service is it ``dim-<role>``.

Trace context crosses process boundaries in NATS headers (`events.bus` injects ``traceparent``
on every publish; consumers continue from it), so one trace shows a request from the gateway
through the orchestrator and the worker to the engine.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from services.settings import Settings


def resource(settings: Settings, role: str) -> Resource:
    """The process's resource: the environment's attributes, with dim's defaults where it
    names none (`service.name` dim-<role>, `service.namespace` the dim namespace)."""
    given = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME and the SDK's own
    attributes = dict(given.attributes)
    if str(attributes.get(SERVICE_NAME, "unknown_service")).startswith("unknown_service"):
        attributes[SERVICE_NAME] = f"dim-{role}"
    attributes.setdefault("service.namespace", settings.namespace)
    return Resource(attributes, given.schema_url)


def otlp_exporter(settings: Settings) -> SpanExporter:
    """The OTLP exporter of the settings' protocol; DIM_OTEL_ENDPOINT over the exporter's own
    endpoint variables."""
    endpoint = settings.otel_endpoint or None
    if settings.otel_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter(endpoint=endpoint)


def setup_tracing(settings: Settings, role: str) -> TracerProvider | None:
    """Install a tracer provider exporting as the settings say, and return it; no exporter
    leaves tracing a no-op (None)."""
    exporters = settings.trace_exporters
    if not exporters:
        return None
    provider = TracerProvider(resource=resource(settings, role))
    for name in exporters:
        exporter = ConsoleSpanExporter() if name == "console" else otlp_exporter(settings)
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider
