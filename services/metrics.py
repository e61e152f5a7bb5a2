"""Prometheus metrics of every dim process (documented in docs/metrics.md).

Names follow the serving stacks' conventions (vLLM's `vllm:time_to_first_token_seconds`,
TGI's `tgi_request_duration`): a `dim_` prefix, the component, base units in the name, `_total`
on counters. Each process object owns its own registry, so several workers in one process (as
in tests) never collide. Every served registry also carries the process's own metrics
(`process_*`, `python_*`: prometheus_client's process, platform and GC collectors), once.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
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


def process_registry(role: str) -> CollectorRegistry:
    """A registry with the process's own metrics (`process_*` from /proc, `python_info`,
    `python_gc_*`) and `dim_process_info{role, version}`."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    info = Gauge(
        "dim_process_info",
        "Constant 1, labelled with the process's role and dim's version",
        ["role", "version"],
        registry=registry,
    )
    info.labels(role=role.split()[0], version=_version()).set(1)
    return registry


def _version() -> str:
    try:
        return metadata.version("dim")
    except metadata.PackageNotFoundError:
        return "unknown"


class Combined:
    """A collector that yields the metrics of several registries, each family once (the first
    registry's wins: an engine's own registry may carry the process collectors too)."""

    def __init__(self, *registries: Any) -> None:
        self.registries = registries

    def collect(self) -> Any:
        seen: set[str] = set()
        for registry in self.registries:
            for family in registry.collect():
                if family.name not in seen:
                    seen.add(family.name)
                    yield family


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


class GatewayMetrics:
    """What one gateway measures about the requests it answers."""

    def __init__(self) -> None:
        self.registry = r = process_registry("gateway")
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


class OrchestratorMetrics:
    """What one orchestrator holds now, read when scraped: `orchestrator` is the running
    instance (its fair queue, active jobs and lost append races)."""

    def __init__(self, orchestrator: Any) -> None:
        self.orchestrator = orchestrator
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def collect(self) -> Any:
        o = self.orchestrator
        # Read from the server's thread while the loop changes them: copy, and try again if a
        # dict changed size meanwhile.
        for _ in range(5):
            try:
                held = dict(o.fair.held_by_model())
                waiting = dict(o.fair.waiting)
                active = len(o.active)
                break
            except RuntimeError:
                continue
        else:
            return
        family = GaugeMetricFamily(
            "dim_orchestrator_jobs_held",
            "Jobs held back by admission now (their model's queue is full), by model",
            labels=["model"],
        )
        for model, count in held.items():
            family.add_metric([model], count)
        yield family
        family = GaugeMetricFamily(
            "dim_orchestrator_queued_first_attempts",
            "First attempts this instance counts waiting in the model's shared queue",
            labels=["model"],
        )
        for model, count in waiting.items():
            family.add_metric([model], count)
        yield family
        yield GaugeMetricFamily(
            "dim_orchestrator_jobs_active", "Unfinished jobs this instance keeps", value=active
        )
        yield CounterMetricFamily(
            "dim_orchestrator_append_conflicts",
            "Appends refused because another writer appended to the job first",
            value=o.lost_races,
        )


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

    def degraded(self) -> dict[str, Any] | None:
        """What `/readyz` adds while some job's view lags its log (503 `degraded`): some of
        the jobs behind and why; None while every view matches its log."""
        behind = dict(list(self.behind.items())[:20])  # a snapshot (written by the loop)
        if not behind:
            return None
        return {"views_behind": len(self.behind), "jobs": behind, "fix": "dim projections rebuild"}
