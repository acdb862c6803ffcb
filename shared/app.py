"""The app factory every service builds on: a lifespan that owns the engine and clients as one typed
`ServiceState`, middleware, errors, health, metrics and tracing. The gateway uses the same pieces
with its own lifespan and state (`gateway/app.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import httpx
from fastapi import APIRouter, Depends, FastAPI
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from shared.admission import AdaptiveLimit, AdmissionMetrics, AdmissionMiddleware, LimitSettings, Shedder
from shared.caller import require_identity
from shared.calls import CallPolicy, UpstreamMetrics
from shared.db import PoolMetrics, create_engine, create_sessionmaker
from shared.docs import add_offline_docs
from shared.errors import PROBLEM_BASE, PROBLEM_JSON, PROBLEM_SCHEMA, ServiceUnavailable, install_error_handlers
from shared.identity import IdentitySigner, IdentityVerifier
from shared.metrics import HttpMetrics, metrics_endpoint
from shared.middleware import BodySizeLimitMiddleware, ObservabilityMiddleware
from shared.networks import Networks
from shared.pool import create_http_client
from shared.problem_docs import live_docs, ready_docs
from shared.request_id import request_id_of
from shared.settings import BaseServiceSettings, ProcessSettings
from shared.state import LifespanState, ServiceState, app_state, lifespan_state_of
from shared.telemetry import (
    ServerSpans,
    create_tracer_provider,
    instrument_engine,
    set_global_provider_once,
    start_export,
)

logger = logging.getLogger("portico.app")

T = TypeVar("T")
S = TypeVar("S", bound=BaseServiceSettings)
C = TypeVar("C")

# A readiness check gets the process's state and raises when its dependency is not usable.
ReadinessCheck = Callable[[T], Awaitable[None]]
# Builds what a service adds to the common state (and runs its workers) for the life of the app.
ContextFactory = Callable[[ServiceState[S, None]], contextlib.AbstractAsyncContextManager[C]]
OPENAPI_URL = "/openapi.json"


@dataclass
class ServiceSpec(Generic[S, C]):
    """What makes one service different from the others."""

    name: str
    title: str
    routers: Sequence[APIRouter]
    needs_http_client: bool = False
    # The service's own collaborators, built after the engine and clients; None adds nothing.
    context: ContextFactory[S, C] | None = None
    readiness_checks: dict[str, ReadinessCheck[ServiceState[S, C]]] = field(default_factory=dict)


# Completes a generated OpenAPI document in place (the gateway adds its security schemes, headers and
# the schemas of the bodies it forwards).
OpenApiHook = Callable[[dict[str, Any]], None]


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
    database: bool,
    registry: CollectorRegistry | None = None,
    on_pool_timeout: Callable[[], None] | None = None,
    admission: bool = True,
) -> HttpMetrics:
    """Middleware, error handlers, metrics and tracing shared by the gateway and the services.
    `registry`: where the process's own metrics already are, to serve them on `/metrics` too.
    `admission`: the admission stage (`shared/admission.py`), outside the body limit; the gateway's
    edge admits requests itself, by the caller's plan."""
    metrics = HttpMetrics(registry or CollectorRegistry())
    registry = metrics.registry
    install_error_handlers(app, database=database, on_pool_timeout=on_pool_timeout)
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
    app.add_route("/metrics", metrics_endpoint(registry, allowed), include_in_schema=False)
    return metrics


async def check_database(state: ServiceState[Any, Any]) -> None:
    async with state.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


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

    app.add_api_route("/health/live", live, methods=["GET"], tags=["health"], **live_docs())
    app.add_api_route("/health/ready", ready, methods=["GET"], tags=["health"], **ready_docs(list(checks), NotReady))


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


def create_service_app(settings: S, spec: ServiceSpec[S, C], *, registry: CollectorRegistry | None = None) -> FastAPI:
    """The service `spec` describes; `registry` holds metrics of its own (served with the HTTP ones)."""
    provider = create_tracer_provider(spec.name, settings.trace_sample_ratio)
    set_global_provider_once(provider)
    registry = registry or CollectorRegistry()
    upstream_metrics = UpstreamMetrics(registry)
    pool_metrics = PoolMetrics(registry)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[LifespanState[ServiceState[S, C]]]:
        exporting = start_export(provider)
        engine = create_engine(settings)
        instrument_engine(engine, provider)
        pool_metrics.watch(engine)
        secret = settings.internal_token_secret.get_secret_value()
        http: httpx.AsyncClient | None = create_http_client(settings, provider) if spec.needs_http_client else None
        call_policy = CallPolicy(settings, upstream_metrics)
        base: ServiceState[S, None] = ServiceState(
            settings=settings,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            identity_verifier=IdentityVerifier(secret, spec.name, settings.internal_token_ttl_seconds),
            identity_signer=IdentitySigner(secret, settings.internal_token_ttl_seconds),
            tracer_provider=provider,
            http=http,
            call_policy=call_policy,
            context=None,
        )
        try:
            async with contextlib.AsyncExitStack() as stack:
                if spec.context is not None:
                    state = base.with_context(await stack.enter_async_context(spec.context(base)))
                else:
                    # No context factory: the spec's context type is None.
                    state = cast(ServiceState[S, C], base)
                logger.info("%s ready (exporting traces: %s)", spec.name, exporting)
                yield lifespan_state_of(state, app.shedder)
        finally:
            await call_policy.aclose()
            if http is not None:
                await http.aclose()
            pool_metrics.watch(None)
            await engine.dispose()
            provider.shutdown()

    app = create_fastapi(settings, spec.title, lifespan)
    install_common(app, settings, provider, database=True, registry=registry, on_pool_timeout=pool_metrics.timeouts.inc)
    checks: dict[str, ReadinessCheck[ServiceState[S, C]]] = {"database": check_database, **spec.readiness_checks}
    add_health_routes(app, checks)
    for router in spec.routers:
        app.include_router(router, dependencies=[Depends(require_identity)])
    return app
