"""What every process's app is made of: the FastAPI app with the shared Problem schema, middleware,
errors, health, metrics and tracing. The services build on it with a database
(`shared/service_app.py`); the gateway with its own lifespan and state (`gateway/app.py`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from shared.admission import AdaptiveLimit, AdmissionMetrics, AdmissionMiddleware, LimitSettings, Shedder
from shared.contract import LIVE_PATH, METRICS_PATH, READY_PATH
from shared.docs import add_offline_docs
from shared.errors import PROBLEM_BASE, PROBLEM_JSON, PROBLEM_SCHEMA, ServiceUnavailable, install_error_handlers
from shared.metrics import HttpMetrics, metrics_endpoint
from shared.middleware import BodySizeLimitMiddleware, ObservabilityMiddleware
from shared.networks import Networks
from shared.problem_docs import live_docs, ready_docs
from shared.request_id import request_id_of
from shared.settings import ProcessSettings
from shared.state import app_state
from shared.telemetry import ServerSpans

logger = logging.getLogger("portico.app")

T = TypeVar("T")

# A readiness check gets the process's state and raises when its dependency is not usable.
ReadinessCheck = Callable[[T], Awaitable[None]]
# Completes a generated OpenAPI document in place (the gateway adds its security schemes, headers and
# the schemas of the bodies it forwards).
OpenApiHook = Callable[[dict[str, Any]], None]
OPENAPI_URL = "/openapi.json"


class NotReady(ServiceUnavailable, code="NOT_READY", title="Not ready"):
    """`/health/ready` when a dependency's check fails (the database for a service; every service and
    Redis for the gateway); the answer names the failing dependencies, the reasons go to the log."""


class PorticoAPI(FastAPI):
    """FastAPI with the shared Problem schema in its OpenAPI document, hooks that complete it, and
    room for one layer outside Starlette's error middleware: the observability stage, so that a 500
    rendered for an unhandled exception is still inside the request's span, counted and logged."""

    outermost: Middleware | None = None
    # Every metric the process serves on /metrics (set by `install_common`).
    metrics_registry: CollectorRegistry | None = None
    # Refuses requests from their heads under overload, in the server's protocol (`Shedder`); handed
    # to the server through the lifespan state. None: admission is off.
    shedder: Shedder | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.openapi_hooks: list[OpenApiHook] = []

    def build_middleware_stack(self) -> ASGIApp:
        app = super().build_middleware_stack()
        if self.outermost is not None:
            cls, args, kwargs = self.outermost
            app = cls(app, *args, **kwargs)
        return app

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema:
            return self.openapi_schema
        schema = super().openapi()  # cached by FastAPI as self.openapi_schema
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        for hook in self.openapi_hooks:
            hook(schema)
        return schema


def install_common(
    app: PorticoAPI,
    settings: ProcessSettings,
    provider: TracerProvider,
    *,
    registry: CollectorRegistry | None = None,
    admission: bool = True,
    sparse: frozenset[str] = frozenset(),
) -> HttpMetrics:
    """Middleware, error handlers, metrics and tracing shared by the gateway and the services.
    `registry`: where the process's own metrics already are, to serve them on `/metrics` too;
    `sparse`: gauges of its whose zero samples are not served (`metrics_endpoint`).
    `admission`: the admission stage (`shared/admission.py`), outside the body limit; the gateway's
    edge admits requests itself, by the caller's plan."""
    metrics = HttpMetrics(registry or CollectorRegistry())
    registry = metrics.registry
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    if admission:
        admission_metrics = AdmissionMetrics(registry)
        limit = AdaptiveLimit(LimitSettings.of(settings), admission_metrics) if settings.admission_enabled else None
        app.add_middleware(AdmissionMiddleware, limit=limit, metrics=admission_metrics)
        if limit is not None:
            app.shedder = Shedder(limit, admission_metrics, max_body=settings.max_body_bytes)
    app.outermost = Middleware(
        ObservabilityMiddleware, spans=ServerSpans(provider), metrics=metrics, access_log=settings.access_log
    )
    allowed = Networks(settings.metrics_allowed_networks)
    app.metrics_registry = registry
    app.add_route(METRICS_PATH, metrics_endpoint(registry, allowed, sparse), include_in_schema=False)
    return metrics


def add_health_routes(app: FastAPI, checks: dict[str, ReadinessCheck[T]], timeout: float = 2.0) -> None:
    """`/health/live`, and `/health/ready` running `checks` against the app's lifespan state."""

    async def live() -> dict[str, str]:
        return {"status": "ok"}

    async def ready(request: Request) -> Response:
        state: T = app_state(request)
        failing: dict[str, str] = {}

        async def run(name: str, check: ReadinessCheck[T]) -> None:
            try:
                # Probes are not traced; their SQL, Redis and HTTP calls would be orphan traces.
                with suppress_instrumentation():
                    await asyncio.wait_for(check(state), timeout)
            except Exception as exc:  # any failure of a dependency means not ready
                failing[name] = f"{type(exc).__name__}: {exc}"[:300]

        await asyncio.gather(*(run(name, check) for name, check in checks.items()))
        if failing:
            # The reasons name internal hosts and ports: they go to the log, not to the caller.
            logger.warning("not ready: %s", "; ".join(f"{name}: {why}" for name, why in sorted(failing.items())))
            return JSONResponse(
                {
                    "type": PROBLEM_BASE + NotReady.slug,
                    "title": NotReady.title,
                    "status": NotReady.status_code,
                    "detail": f"Failing dependencies: {', '.join(sorted(failing))}.",
                    "error_code": NotReady.error_code,
                    "request_id": request_id_of(request.scope),
                    "checks": {name: "failing" if name in failing else "ok" for name in checks},
                },
                status_code=503,
                media_type=PROBLEM_JSON,
            )
        return JSONResponse({"status": "ok", "checks": dict.fromkeys(checks, "ok")})

    app.add_api_route(LIVE_PATH, live, methods=["GET"], tags=["health"], **live_docs())
    app.add_api_route(READY_PATH, ready, methods=["GET"], tags=["health"], **ready_docs(list(checks), NotReady))


def create_fastapi(settings: ProcessSettings, title: str, lifespan: Callable[[FastAPI], Any]) -> PorticoAPI:
    """An app with docs and OpenAPI off in production; the docs pages serve their own assets."""
    app = PorticoAPI(
        # FastAPI's own OpenTelemetry spans and metrics stay off: the observability stage records the
        # one server span and the HTTP metrics of each request, and FastAPI's would add a second server
        # span and a span per dependency, endpoint and serialization.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        title=title,
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=OPENAPI_URL if settings.docs_enabled else None,
        # Operation ids are the route names (`create_order`, `live`), so a generated client's functions are too.
        generate_unique_id_function=lambda route: route.name,
    )
    if settings.docs_enabled:
        add_offline_docs(app, OPENAPI_URL)
    return app
