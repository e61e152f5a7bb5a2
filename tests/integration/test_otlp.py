"""Spans of real dim processes reach a real OTLP receiver, over gRPC and over HTTP/protobuf, as
the standard OTEL_* variables say."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from events.bus import Bus
from services.accounts.keys import create_key
from services.nats_server import free_port
from services.settings import Settings
from tests.mesh import all_of, spawn, wait_ready, wait_until


@dataclass
class Received:
    """What a receiver was sent: (service.name, span name, resource attributes) and headers."""

    spans: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(
        self, request: trace_service_pb2.ExportTraceServiceRequest, headers: dict[str, str]
    ) -> None:
        with self.lock:
            self.headers.append(headers)
            for rs in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                for scope in rs.scope_spans:
                    for span in scope.spans:
                        self.spans.append((attrs.get("service.name", ""), span.name, attrs))

    def names(self) -> set[tuple[str, str]]:
        with self.lock:
            return {(service, name) for service, name, _ in self.spans}


@contextlib.contextmanager
def grpc_receiver() -> Iterator[tuple[str, Received]]:
    """An OTLP/gRPC trace receiver (the generated TraceService) on a free port."""
    received = Received()

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            received.add(request, dict(context.invocation_metadata()))
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.stop(grace=None)


@contextlib.contextmanager
def http_receiver() -> Iterator[tuple[str, Received]]:
    """An OTLP/HTTP (protobuf) trace receiver at /v1/traces on a free port."""
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = 404
            if (
                self.path == "/v1/traces"
                and self.headers["Content-Type"] == "application/x-protobuf"
            ):
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                received.add(request, {k.lower(): v for k, v in self.headers.items()})
                status = 200
            answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_spans_of_real_processes_reach_an_otlp_receiver(
    bus: Bus, settings: Settings, protocol: str
) -> None:
    port = free_port()
    s = settings.model_copy(update={"gateway_port": port})
    _, key = await create_key(bus, principal_id="otel", tenant="acme", roles=("member",), actor="t")
    receiver = grpc_receiver() if protocol == "grpc" else http_receiver()
    with receiver as (endpoint, received):
        otel = {
            "OTEL_TRACES_EXPORTER": "otlp",
            # the traces variable over the general one
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf" if protocol == "grpc" else "grpc",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_HEADERS": "x-collector-key=k123",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        worker = {**otel, "DIM_NODE_ID": "w1"}  # its service name: dim's default
        gateway = {**otel, "OTEL_SERVICE_NAME": "edge"}  # its own, never overwritten
        with all_of(spawn(s, "worker", **worker), spawn(s, "gateway", **gateway)):
            base = f"http://127.0.0.1:{port}"
            await wait_ready(base)
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:

                async def served() -> bool:
                    r = await http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
                    return bool(r.json()["data"])

                await wait_until(served, what="the worker in the gateway's view")
                r = await http.post(
                    "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]},
                )
                assert r.status_code == 200, r.text

            async def arrived() -> bool:
                names = received.names()
                return ("dim-worker", "worker.task") in names and (
                    "edge",
                    "POST /v1/chat/completions",
                ) in names

            await wait_until(arrived, timeout_s=20, what=f"spans of both over {protocol}")
    by_service: dict[str, set[str]] = {}
    for service, name, attrs in received.spans:
        by_service.setdefault(service, set()).add(name)
        assert attrs["deployment.environment"] == "test"
        assert attrs["service.namespace"] == settings.namespace
    assert {"worker.task", "engine.generate"} <= by_service["dim-worker"], by_service
    assert all(h.get("x-collector-key") == "k123" for h in received.headers)
