"""The gateway's Litestar app: `create_app(settings)`."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.datastructures import MutableScopeHeaders
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from events.ids import new_id
from gateway.access_log import access_log
from gateway.auth import EXTRA_HEADERS, provide_gateway, provide_principal
from gateway.controllers.auth import AuthController
from gateway.controllers.batches import BatchesController
from gateway.controllers.embeddings import EmbeddingsController
from gateway.controllers.files import FilesController
from gateway.controllers.health import HealthController
from gateway.controllers.jobs import JobsController
from gateway.controllers.keys import KeysController
from gateway.controllers.nodes import NodesController
from gateway.controllers.openai import ChatController, CompletionsController, ModelsController
from gateway.controllers.responses import ResponsesController
from gateway.controllers.stats import StatsController
from gateway.controllers.stream import job_stream, submit_and_stream
from gateway.controllers.ui import openapi_router, redoc_plugin, ui_handlers
from gateway.controllers.usage import UsageController
from gateway.controllers.ws_tickets import WsTicketsController
from gateway.cors import cors_config
from gateway.errors import exception_handlers
from gateway.http_server import bounded_http
from gateway.openapi_errors import document_errors
from gateway.runtime import Gateway
from services import logs
from services.metrics import CONTENT_TYPE, GatewayMetrics
from services.settings import Settings

__all__ = ["bounded_http", "create_app"]  # what `dim gateway` serves: the app, its HTTP protocol

REQUEST_ID = "x-request-id"
_REQUEST_ID = re.compile(rb"[!-~]{1,128}")


def request_id(app: ASGIApp) -> ASGIApp:
    """Middleware: every response carries ``x-request-id`` (the client's, or a new one)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID.encode(), b"")
        # the client's id is echoed only if it is one: printable ASCII, at most 128 characters
        rid = given.decode() if _REQUEST_ID.fullmatch(given) else new_id()
        token = logs.request_id.set(rid)  # on every log line while this request is answered

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                headers[REQUEST_ID] = rid
                for name, value in scope.get(EXTRA_HEADERS, {}).items():  # type: ignore[attr-defined]
                    headers.setdefault(name, value)
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            logs.request_id.reset(token)

    return middleware


def observe(metrics: GatewayMetrics) -> Callable[[ASGIApp], ASGIApp]:
    """Middleware: count every HTTP request by route template and status, and time it."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            t0 = time.perf_counter()
            status = 500

            async def send_observed(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_observed)
            finally:
                route = scope.get("path_template") or "unmatched"
                metrics.requests.labels(route=route, method=scope["method"], status=status).inc()
                metrics.duration.labels(route=route).observe(time.perf_counter() - t0)

        return middleware

    return wrap


@get("/metrics", include_in_schema=False, sync_to_thread=False)
def prometheus_metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus exposition of this gateway's metrics (unauthenticated, like vLLM's)."""
    gateway: Gateway = request.app.state.gateway
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)


def create_app(settings: Settings) -> Litestar:
    """The gateway app; it connects to NATS when it starts and disconnects when it stops."""
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.gateway = await Gateway.start(settings, metrics)
        try:
            yield
        finally:
            await app.state.gateway.stop()

    openapi = OpenAPIConfig(
        title="dim gateway",
        version="0.1.0",
        description="OpenAI-compatible API and jobs API of the dim inference mesh.",
        components=Components(
            security_schemes={
                "BearerAuth": SecurityScheme(
                    type="http", scheme="bearer", description="dim API key"
                )
            }
        ),
        security=[{"BearerAuth": []}],
        path="/openapi",
        render_plugins=[redoc_plugin()],  # the vendored renderer: no CDN
        openapi_router=openapi_router("/openapi"),
    )
    handlers: list[Any] = [
        HealthController,
        ModelsController,
        ChatController,
        CompletionsController,
        EmbeddingsController,
        ResponsesController,
        JobsController,
        KeysController,
        NodesController,
        UsageController,
        FilesController.limited(settings.file_max_bytes),
        BatchesController,
        AuthController,
        job_stream,
        submit_and_stream,
        prometheus_metrics,
        # browsers: the dashboard, its live figures, WebSocket tickets (docs/dashboard.md)
        StatsController,
        WsTicketsController,
        *ui_handlers(),
    ]
    # Server spans only when they go somewhere: the middleware costs time on every request.
    plugins = [OpenTelemetryPlugin(OpenTelemetryConfig())] if settings.trace_exporters else []
    app = Litestar(
        plugins=plugins,
        route_handlers=handlers,
        lifespan=[lifespan],
        dependencies={"gateway": Provide(provide_gateway), "principal": Provide(provide_principal)},
        exception_handlers=exception_handlers,
        middleware=[request_id, *([access_log] if settings.access_log else []), observe(metrics)],
        openapi_config=openapi,
        cors_config=cors_config(settings),
        logging_config=None,  # dim's own (services/logs.py): text or JSON, set up by the process
        request_max_body_size=settings.max_body_bytes,
        debug=False,
    )
    document_errors(app.openapi_schema)  # built once, here; served as it is then
    return app
