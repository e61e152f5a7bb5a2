"""Prometheus metrics of the gateway, the workers and the projector (documented in
docs/metrics.md).

Names follow the serving stacks' conventions (vLLM's `vllm:time_to_first_token_seconds`,
TGI's `tgi_request_duration`): a `dim_` prefix, the component, base units in the name, `_total`
on counters. Each process object owns its own registry, so several workers in one process (as
in tests) never collide.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds; from sub-millisecond (simulated engine, cache hits) to long generations.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
TOKEN_GAP_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    1.0,
)


def observe_per_token(histogram: Histogram, seconds: float, tokens: int) -> None:
    """Record a gap that produced `tokens` tokens as that many per-token gaps (at most 64)."""
    gap = seconds / tokens
    for _ in range(min(tokens, 64)):
        histogram.observe(gap)


class WorkerMetrics:
    """What one worker measures about its engine."""

    def __init__(self, engine: str) -> None:
        self.registry = r = CollectorRegistry()
        model = ["model"]
        self.requests = Counter(
            "dim_worker_requests",
            "Task attempts finished, by outcome (completed, failed, aborted)",
            ["model", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "dim_worker_errors", "Failed task attempts by kind", ["model", "kind"], registry=r
        )
        self.ttft = Histogram(
            "dim_worker_time_to_first_token_seconds",
            "From task start to the engine's first token",
            model,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "dim_worker_inter_token_latency_seconds",
            "Gap between consecutive engine outputs, per output token",
            model,
            buckets=TOKEN_GAP_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "dim_worker_request_duration_seconds",
            "From task start to its last token",
            model,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.running = Gauge(
            "dim_worker_requests_running", "Requests in the engine now", model, registry=r
        )
        self.queued = Gauge(
            "dim_worker_queue_depth",
            "Tasks waiting for a worker of the model (the model's task consumer, mesh-wide)",
            model,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "dim_worker_prompt_tokens", "Prompt tokens processed", model, registry=r
        )
        self.generation_tokens = Counter(
            "dim_worker_generation_tokens", "Tokens generated", model, registry=r
        )
        self.cold_start = Gauge(
            "dim_worker_cold_start_seconds",
            "Time to load and warm the engine before the node announced itself",
            registry=r,
        )
        self.info = Gauge(
            "dim_worker_info", "Constant 1, labelled with the engine kind", ["engine"], registry=r
        )
        self.info.labels(engine=engine).set(1)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int, engine: Any = None) -> tuple[Any, threading.Thread]:
        """Serve `/metrics` on a background thread; returns (server, thread).

        `engine` is the engine's own registry, if it keeps one (vLLM's `vllm:*` metrics),
        served beside dim's.
        """
        registry = self.registry
        if engine is not None:
            registry = CollectorRegistry()
            registry.register(_Both(self.registry, engine))
        return start_http_server(port, addr=host, registry=registry)


class _Both:
    """A collector that yields the metrics of two registries."""

    def __init__(self, *registries: Any) -> None:
        self.registries = registries

    def collect(self) -> Any:
        for registry in self.registries:
            yield from registry.collect()


class GatewayMetrics:
    """What one gateway measures about the requests it answers."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "dim_gateway_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "dim_gateway_request_duration_seconds",
            "From request received to the last byte of the answer",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "dim_gateway_time_to_first_token_seconds",
            "From a completion request to its first streamed text",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "dim_gateway_inter_token_latency_seconds",
            "Gap between streamed chunks sent to a client, per token",
            ["model"],
            buckets=TOKEN_GAP_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "dim_gateway_requests_in_flight",
            "Completion requests being answered now",
            ["model"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "dim_gateway_prompt_tokens",
            "Prompt tokens of completed requests",
            ["model"],
            registry=r,
        )
        self.generation_tokens = Counter(
            "dim_gateway_generation_tokens",
            "Generated tokens of completed requests",
            ["model"],
            registry=r,
        )
        self.errors = Counter("dim_gateway_errors", "Error answers by code", ["code"], registry=r)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)


class ProjectorMetrics:
    """What one projector measures about the views it keeps, and whether they match the log."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.views_written = Counter(
            "dim_projector_views_written_total", "Job views stored", registry=r
        )
        self.views_trimmed = Counter(
            "dim_projector_views_trimmed_total",
            "Job views stored without their texts (larger than a view may be)",
            registry=r,
        )
        self.view_write_failures = Counter(
            "dim_projector_view_write_failures_total",
            "Job views that could not be stored (the view lags its log)",
            registry=r,
        )
        self.views_behind = Gauge(
            "dim_projector_views_behind",
            "Jobs whose last view write failed and has not succeeded since",
            registry=r,
        )
        # job id -> why its view could not be stored (until a later write of it succeeds)
        self.behind: dict[str, str] = {}

    def failed(self, job_id: str, why: str) -> None:
        """A job's view could not be stored."""
        self.view_write_failures.inc()
        self.behind[job_id] = why
        self.views_behind.set(len(self.behind))

    def written(self, job_id: str, trimmed: bool) -> None:
        """A job's view was stored."""
        self.views_written.inc()
        if trimmed:
            self.views_trimmed.inc()
        self.caught_up(job_id)

    def caught_up(self, job_id: str) -> None:
        """A job's stored view matches its log (again)."""
        if self.behind.pop(job_id, None) is not None:
            self.views_behind.set(len(self.behind))

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """`/readyz`: 200 while every view matches its log, else 503 `degraded` with some of
        the jobs behind and why."""
        behind = dict(list(self.behind.items())[:20])  # a snapshot (written by the loop)
        if not behind:
            return 200, {"status": "ready"}
        return 503, {
            "status": "degraded",
            "views_behind": len(self.behind),
            "jobs": behind,
            "fix": "dim projections rebuild",
        }

    def serve(self, host: str, port: int) -> ThreadingHTTPServer:
        """Serve `/metrics`, `/healthz` and `/readyz` on a background thread."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    status, body, kind = 200, generate_latest(metrics.registry), CONTENT_TYPE
                elif path in ("/healthz", "/readyz"):
                    status, doc = (
                        (200, {"status": "ok"}) if path == "/healthz" else (metrics.readiness())
                    )
                    body, kind = json.dumps(doc).encode(), "application/json"
                else:
                    status, body, kind = 404, b"not found\n", "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # no line per probe

        server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=server.serve_forever, name="projector-http", daemon=True).start()
        return server
