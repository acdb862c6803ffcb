"""The app factory every service builds on: lifespan-owned engine and clients, middleware, errors,
health, metrics and tracing. The gateway uses the same pieces with its own lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared.db import create_engine, create_sessionmaker
from shared.errors import PROBLEM_SCHEMA, install_error_handlers
from shared.http import create_http_client
from shared.identity import IdentitySigner, IdentityVerifier, require_identity
from shared.metrics import HttpMetrics, MetricsMiddleware, metrics_endpoint
from shared.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from shared.settings import BaseServiceSettings
from shared.telemetry import create_tracer_provider, instrument_engine, set_global_provider_once, start_export

logger = logging.getLogger("portico.app")

ReadinessCheck = Callable[[dict[str, Any]], Awaitable[None]]
# Paths that are never traced: probes and scrapes would drown the real traces.
UNTRACED_URLS = "health/live,health/ready,metrics"


@dataclass
class ServiceSpec:
    """What makes one service different from the others."""

    name: str
    title: str
    routers: Sequence[APIRouter]
    needs_http_client: bool = False
    # Extra state built in the lifespan after the engine, e.g. background workers.
    extra_lifespan: Callable[[dict[str, Any]], contextlib.AbstractAsyncContextManager[None]] | None = None
    readiness_checks: dict[str, ReadinessCheck] = field(default_factory=dict)


def add_problem_schema(app: FastAPI) -> None:
    """Adds the shared Problem schema to the app's OpenAPI document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes, description=app.description)
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_common(app: FastAPI, settings: BaseServiceSettings, provider: TracerProvider) -> HttpMetrics:
    """Middleware, error handlers, metrics and tracing shared by the gateway and the services."""
    registry = CollectorRegistry()
    metrics = HttpMetrics(registry)
    install_error_handlers(app)
    # Added innermost first: the request context wraps everything else.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestContextMiddleware, access_log=settings.access_log)
    app.add_route("/metrics", metrics_endpoint(registry), include_in_schema=False)
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, excluded_urls=UNTRACED_URLS, exclude_spans=["receive", "send"]
    )
    add_problem_schema(app)
    return metrics


async def check_database(state: dict[str, Any]) -> None:
    engine: AsyncEngine = state["engine"]
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def add_health_routes(app: FastAPI, checks: dict[str, ReadinessCheck], timeout: float = 2.0) -> None:
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    async def ready(request: Request) -> Response:
        state = dict(request.state._state)
        failing: dict[str, str] = {}

        async def run(name: str, check: ReadinessCheck) -> None:
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
                    "type": "https://portico.dev/problems/not-ready",
                    "title": "Not ready",
                    "status": 503,
                    "detail": f"Failing dependencies: {', '.join(sorted(failing))}.",
                    "error_code": "NOT_READY",
                    "request_id": getattr(request.state, "request_id", None),
                    "checks": {name: "failing" if name in failing else "ok" for name in checks},
                },
                status_code=503,
                media_type="application/problem+json",
            )
        return JSONResponse({"status": "ok", "checks": dict.fromkeys(checks, "ok")})

    app.add_api_route("/health/live", live, methods=["GET"], tags=["health"])
    app.add_api_route("/health/ready", ready, methods=["GET"], tags=["health"])


def create_service_app(settings: BaseServiceSettings, spec: ServiceSpec) -> FastAPI:
    provider = create_tracer_provider(spec.name)
    set_global_provider_once(provider)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        exporting = start_export(provider)
        engine = create_engine(settings)
        instrument_engine(engine, provider)
        secret = settings.internal_token_secret.get_secret_value()
        state: dict[str, Any] = {
            "settings": settings,
            "engine": engine,
            "sessionmaker": create_sessionmaker(engine),
            "identity_verifier": IdentityVerifier(secret, spec.name),
            "identity_signer": IdentitySigner(secret, settings.internal_token_ttl_seconds),
            "tracer_provider": provider,
        }
        http: httpx.AsyncClient | None = None
        if spec.needs_http_client:
            http = create_http_client(settings, provider)
            state["http"] = http
        try:
            async with contextlib.AsyncExitStack() as stack:
                if spec.extra_lifespan is not None:
                    await stack.enter_async_context(spec.extra_lifespan(state))
                logger.info("%s ready on %s (exporting traces: %s)", spec.name, settings.port, exporting)
                yield state
        finally:
            if http is not None:
                await http.aclose()
            await engine.dispose()
            provider.shutdown()

    app = FastAPI(
        title=spec.title,
        lifespan=lifespan,
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
    )
    install_common(app, settings, provider)
    checks: dict[str, ReadinessCheck] = {"database": check_database, **spec.readiness_checks}
    add_health_routes(app, checks)
    for router in spec.routers:
        app.include_router(router, dependencies=[Depends(require_identity)])
    return app
