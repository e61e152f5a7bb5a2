"""JSON log lines, and which trace exporters the settings choose."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider

from services import logs
from services.settings import Settings


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("dim.test", logging.WARNING, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return record


def test_a_json_line_has_time_level_logger_message_request_and_trace() -> None:
    formatter = logs.JsonFormatter("worker")
    plain = json.loads(formatter.format(_record('hello "there"\nsecond line')))
    assert plain["level"] == "WARNING" and plain["logger"] == "dim.test"
    assert plain["message"] == 'hello "there"\nsecond line' and plain["role"] == "worker"
    assert plain["time"].endswith("+00:00") and "T" in plain["time"]
    assert "request_id" not in plain and "trace_id" not in plain

    tracer = TracerProvider().get_tracer("test")  # a recording span, without a global provider
    token = logs.request_id.set("req-1")
    try:
        with tracer.start_as_current_span("work") as span:
            line = formatter.format(_record("in a request", fields={"status": 200, "level": "x"}))
    finally:
        logs.request_id.reset(token)
    doc = json.loads(line)
    assert doc["request_id"] == "req-1"
    assert doc["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert doc["span_id"] == format(span.get_span_context().span_id, "016x")
    assert doc["status"] == 200 and doc["level"] == "WARNING"  # a field never hides a key's
    assert "\n" not in line


def test_an_exception_is_one_field_of_one_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "dim", logging.ERROR, __file__, 1, "failed", (), exc_info=sys.exc_info()
        )
    line = logs.JsonFormatter("gateway").format(record)
    assert "\n" not in line
    assert "RuntimeError: boom" in json.loads(line)["exception"]


def test_an_exporter_dim_does_not_have_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER names jaeger"):
        Settings(otel_traces_exporter="otlp,jaeger")
    with pytest.raises(ValueError, match="http/json"):
        Settings(otel_protocol="http/json")


def test_which_exporters_the_settings_choose() -> None:
    assert Settings().trace_exporters == ()
    assert Settings(otel_traces_exporter="none").trace_exporters == ()
    assert Settings(otel_traces_exporter="otlp, console").trace_exporters == ("otlp", "console")
    # DIM_OTEL_EXPORTER is dim's override of the standard variable
    assert Settings(otel_traces_exporter="otlp", otel_exporter="none").trace_exporters == ()
    assert Settings(otel_traces_exporter="none", otel_exporter="console").trace_exporters == (
        "console",
    )
    # an endpoint alone turns OTLP on (the standard's default exporter, where it can go)
    assert Settings(otel_otlp_endpoint="http://collector:4318").trace_exporters == ("otlp",)
    assert Settings(otel_endpoint="http://collector:4318/v1/traces").trace_exporters == ("otlp",)
    # the standard variables pass to a child through the environment, not as DIM_*
    env = Settings(otel_traces_exporter="otlp", otel_protocol="grpc").to_env()
    assert not any("TRACES_EXPORTER" in k or "PROTOCOL" in k for k in env)
    assert Settings.variable("otel_protocol") == "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"


def test_the_service_name_is_dims_only_where_the_environment_names_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.telemetry import resource

    s = Settings(namespace="prod")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    attrs = resource(s, "worker").attributes
    assert attrs["service.name"] == "dim-worker" and attrs["service.namespace"] == "prod"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=attrs,service.namespace=team")
    attrs = resource(s, "worker").attributes
    assert attrs["service.name"] == "attrs" and attrs["service.namespace"] == "team"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "named")  # over the attributes, as the SDK says
    assert resource(s, "worker").attributes["service.name"] == "named"
