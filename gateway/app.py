"""The gateway's app factory and its edge pipeline.

Every request passes these stages, outermost first (pure ASGI; `edge_pipeline` below is the list):

 1. tracing                        OpenTelemetry ASGI (continues `traceparent`)
 2. request context                request id and access log            shared/middleware.py
 3. metrics                        by route template                    shared/metrics.py
 4. body size limit                413 before the body is read          shared/middleware.py
 5. security headers               nosniff, framing, CSP, HSTS          edge/hygiene.py
 6. trusted hosts                  400 for another Host                 edge/hygiene.py
 7. CORS                           preflights answered here             edge/hygiene.py
 8. gzip                           bodies of 500 bytes or more          Starlette
 9. authentication                 JWT or X-API-Key, tenant check       auth.py, edge/apikeys.py
10. rate limit                     per tenant / client address, 429     edge/ratelimit.py
11. idempotency                    Idempotency-Key replay, 409, 422     edge/idempotency.py
12. caching                        ETag/304, private, no-store          edge/caching.py
13. routes                         per-route scopes (403), plans (402)  routes/*.py

Stages 5-8 and 10-12 can be switched off by settings (the benchmark measures each one). Everything a
stage needs that holds a connection or state (Redis, the stores, the API key cache) is built in the
lifespan and reaches the stages through `scope["state"]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI
from opentelemetry.instrumentation.redis import RedisInstrumentor
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import BaseRoute

from gateway.auth import AuthenticationMiddleware, JwtVerifier
from gateway.edge.apikeys import ApiKeyResolver
from gateway.edge.caching import CachingMiddleware
from gateway.edge.hygiene import CorsMiddleware, SecurityHeadersMiddleware, TrustedHostMiddleware
from gateway.edge.idempotency import (
    Idempotency,
    IdempotencyMiddleware,
    IdempotencyStore,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
)
from gateway.edge.metrics import EdgeMetrics
from gateway.edge.ratelimit import (
    MemoryRateLimitStore,
    RateLimiter,
    RateLimitMiddleware,
    RateLimitStore,
    RedisRateLimitStore,
    RoutePolicies,
)
from gateway.edge.store import StoreCaller
from gateway.proxy import Upstreams
from gateway.routes import api_keys, orders, products, users, webhooks
from gateway.settings import GatewaySettings
from shared.app import ReadinessCheck, add_health_routes, install_common
from shared.contract import ANONYMOUS
from shared.http import ServiceClient, create_http_client
from shared.identity import IdentitySigner
from shared.telemetry import create_tracer_provider, set_global_provider_once, start_export

logger = logging.getLogger("portico.gateway")


def _service_check(name: str) -> ReadinessCheck:
    async def check(state: dict[str, Any]) -> None:
        upstreams: Upstreams = state["upstreams"]
        response = await upstreams[name].send("GET", "/health/ready", identity=ANONYMOUS)
        if response.status_code != 200:
            raise RuntimeError(f"{name} answered {response.status_code}")

    return check


async def _check_redis(state: dict[str, Any]) -> None:
    redis: Redis = state["redis"]
    await redis.ping()


def create_redis(settings: GatewaySettings) -> Redis:
    """A bounded pool that waits briefly for a free connection; one immediate retry for a pooled
    connection that went stale (Redis restarted). Stage deadlines bound everything else."""
    assert settings.redis_url is not None
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=Retry(NoBackoff(), 1),
    )
    return Redis.from_pool(pool)


def edge_state(
    settings: GatewaySettings, redis: Redis | None, upstreams: Upstreams, metrics: EdgeMetrics
) -> dict[str, Any]:
    """The stores of the edge stages: Redis when configured, in-process otherwise."""
    rate_store: RateLimitStore
    idempotency_store: IdempotencyStore
    if redis is not None:
        rate_store = RedisRateLimitStore(redis, settings.redis_key_prefix)
        idempotency_store = RedisIdempotencyStore(redis, settings.redis_key_prefix)
    else:
        rate_store, idempotency_store = MemoryRateLimitStore(), MemoryIdempotencyStore()
    # In-process stores do no I/O: a deadline would only cost time.
    timeout = settings.redis_timeout_seconds if redis is not None else None
    return {
        "rate_limiter": RateLimiter(
            rate_store,
            StoreCaller(
                "rate_limit", timeout=timeout, fail_open=settings.rate_limit_failure_mode == "open", metrics=metrics
            ),
        ),
        "idempotency": Idempotency(
            idempotency_store,
            StoreCaller(
                "idempotency",
                timeout=timeout,
                fail_open=settings.idempotency_failure_mode == "open",
                metrics=metrics,
            ),
        ),
        "api_keys": ApiKeyResolver(
            upstreams["users"],
            ttl_seconds=settings.api_key_cache_ttl_seconds,
            max_entries=settings.api_key_cache_size,
            metrics=metrics,
        ),
    }


def edge_pipeline(routes: Sequence[BaseRoute], settings: GatewaySettings, metrics: EdgeMetrics) -> list[Middleware]:
    """Stages 5 to 12, outermost first. Needs the routes: per-route rate limits bind to them."""
    stages: list[Middleware] = []
    if settings.security_headers_enabled:
        stages.append(
            Middleware(
                SecurityHeadersMiddleware,
                hsts_max_age=settings.hsts_max_age_seconds,
                hsts_include_subdomains=settings.hsts_include_subdomains,
            )
        )
    if settings.trusted_hosts != ["*"]:
        stages.append(Middleware(TrustedHostMiddleware, hosts=settings.trusted_hosts))
    if settings.cors_allow_origins:
        stages.append(
            Middleware(
                CorsMiddleware,
                origins=settings.cors_allow_origins,
                allow_credentials=settings.cors_allow_credentials,
                max_age=settings.cors_max_age_seconds,
            )
        )
    if settings.gzip_enabled:
        stages.append(
            Middleware(GZipMiddleware, minimum_size=settings.gzip_minimum_bytes, compresslevel=settings.gzip_level)
        )
    stages.append(Middleware(AuthenticationMiddleware, verifier=JwtVerifier(settings)))
    if settings.rate_limit_enabled:
        stages.append(
            Middleware(RateLimitMiddleware, settings=settings, routes=RoutePolicies(routes, settings), metrics=metrics)
        )
    if settings.idempotency_enabled:
        stages.append(Middleware(IdempotencyMiddleware, settings=settings, metrics=metrics))
    stages.append(Middleware(CachingMiddleware, etag=settings.etag_enabled))
    return stages


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    provider = create_tracer_provider("gateway")
    set_global_provider_once(provider)
    cfg = settings
    edge_metrics = EdgeMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        start_export(provider)
        http = create_http_client(cfg, provider)
        signer = IdentitySigner(cfg.internal_token_secret.get_secret_value(), cfg.internal_token_ttl_seconds)
        upstreams = Upstreams(
            {name: ServiceClient(name, url, http, signer) for name, url in cfg.service_urls().items()}
        )
        state: dict[str, Any] = {"settings": cfg, "http": http, "upstreams": upstreams}
        redis: Redis | None = None
        if cfg.redis_url:
            redis = create_redis(cfg)
            RedisInstrumentor.instrument_client(redis, tracer_provider=provider)
            state["redis"] = redis
        state.update(edge_state(cfg, redis, upstreams, edge_metrics))
        try:
            yield state
        finally:
            await asyncio.gather(http.aclose(), *([redis.aclose()] if redis is not None else []))
            provider.shutdown()

    app = FastAPI(
        title="Portico API",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
    )
    checks: dict[str, ReadinessCheck] = {name: _service_check(name) for name in settings.service_urls()}
    if settings.redis_url:
        checks["redis"] = _check_redis
    add_health_routes(app, checks, timeout=settings.ready_timeout_seconds)
    routers = [module.router for module in (users, api_keys, products, orders, webhooks)]
    for router in routers:
        app.include_router(router)
    routes = [route for router in routers for route in router.routes]
    # add_middleware wraps what is already there, so the stages go on innermost first; install_common
    # then adds stages 1-4 around them.
    for stage in reversed(edge_pipeline(routes, settings, edge_metrics)):
        app.add_middleware(stage.cls, *stage.args, **stage.kwargs)
    http_metrics = install_common(app, settings, provider)
    edge_metrics.register(http_metrics.registry)
    return app
