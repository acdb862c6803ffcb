"""The app factory every service builds on: a lifespan that owns the engine and clients as one typed
`ServiceState`, with the common middleware, errors, health, metrics and tracing of `shared/app.py`
and the database's own (its errors, its readiness check, its SQL spans and pool metrics). The gateway,
which has no database, builds on `shared/app.py` alone."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

import httpx
from fastapi import APIRouter, Depends, FastAPI
from prometheus_client import CollectorRegistry

from shared.app import ReadinessCheck, add_health_routes, create_fastapi, install_common
from shared.caller import require_identity
from shared.calls import CallPolicy, UpstreamMetrics
from shared.db import PoolMetrics, check_database, create_engine, create_sessionmaker, install_database_errors
from shared.identity_token import IdentitySigner, IdentityVerifier
from shared.pool import create_http_client
from shared.settings import BaseServiceSettings
from shared.sql_spans import instrument_engine
from shared.state import LifespanState, ServiceState, lifespan_state_of
from shared.telemetry import create_tracer_provider, set_global_provider_once, start_export

logger = logging.getLogger("portico.app")

S = TypeVar("S", bound=BaseServiceSettings)
C = TypeVar("C")

# Builds what a service adds to the common state (and runs its workers) for the life of the app.
ContextFactory = Callable[[ServiceState[S, None]], contextlib.AbstractAsyncContextManager[C]]


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
    install_common(app, settings, provider, registry=registry)
    install_database_errors(app, on_pool_timeout=pool_metrics.timeouts.inc)
    checks: dict[str, ReadinessCheck[ServiceState[S, C]]] = {"database": check_database, **spec.readiness_checks}
    add_health_routes(app, checks)
    for router in spec.routers:
        app.include_router(router, dependencies=[Depends(require_identity)])
    return app
