"""Prometheus metrics as pure ASGI middleware, labelled by route template, never by raw path, and the
`/metrics` route, served only to the networks allowed to read it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.asgi import on_response_start
from shared.networks import Networks

UNMATCHED = "<unmatched>"


class HttpMetrics:
    """The HTTP server metrics of one app, in the app's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "http_requests_total", "HTTP requests answered.", ("method", "route", "status"), registry=registry
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ("method", "route"),
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        def record(message: Message) -> None:
            nonlocal status
            status = message["status"]

        try:
            await self.app(scope, receive, on_response_start(send, record))
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = scope["method"]
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.duration.labels(method, template).observe(time.perf_counter() - start)


def metrics_endpoint(registry: CollectorRegistry, allowed: Networks) -> Callable[[Request], Awaitable[Response]]:
    """The metrics of `registry` for peers in `allowed`; to anyone else the same 404 as a path that is
    no route. The peer is the connection's own address, never X-Forwarded-For: a forwarded address
    is whatever the client wrote, and a client behind a proxy arrives from the proxy's (private)
    address, so the route must also not be published through one."""

    async def metrics(request: Request) -> Response:
        client = request.scope.get("client")
        if client is None or client[0] not in allowed:
            raise HTTPException(404)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
