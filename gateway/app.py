"""The gateway's app factory, its lifespan and its edge pipeline.

Every request passes these stages, outermost first (pure ASGI; `edge_pipeline` below is the list):

1-3. observability                 request id, server span (continues   shared/middleware.py
                                   `traceparent`), metrics, access log  shared/telemetry.py
    (Starlette's error middleware, which renders unhandled exceptions as 500)
 4. body size limit                413 before the body is read          shared/middleware.py
 5. security headers               nosniff, framing, CSP, HSTS          edge/hygiene.py
 6. trusted hosts                  400 for another Host                 edge/hygiene.py
 7. CORS                           preflights answered here             edge/hygiene.py
 8. gzip                           bodies of 500 bytes or more          Starlette
 9. authentication                 JWT or X-API-Key, tenant check       auth.py, edge/apikeys.py
10. rate limit                     per tenant / client address, 429     edge/ratelimit.py
11. idempotency                    Idempotency-Key replay, 409, 422     edge/idempotency.py
12. caching                        ETag/304, private, no-store          edge/caching.py
13. deprecation                    headers of retired routes, counted   edge/deprecation.py
14. routes                         per-route scopes (403), plans (402)  routes/*.py -> proxy.py

Stages 5-8 and 10-12 can be switched off by settings (the benchmark measures each one). What a stage
hands the next (the request id, the principal) is in the request context (`shared/context.py`).

Everything that holds a connection or state (the HTTP client, Redis, the stores, the API key cache)
is built in the lifespan (`open_state`) as one `GatewayState` (`gateway/state.py`). Routes reach it
through `gateway/deps.py`. The stages get a `LifespanSlot` when the pipeline is built, which the
lifespan fills with that state. Why a slot rather than building the stage chain in the lifespan:
Starlette builds the middleware stack on the first ASGI call, which is the lifespan's own startup,
so the stack exists before the state does; building the stages in the lifespan instead would need
one more layer on every request to reach a chain made later. The slot costs one attribute read where
a stage uses the state, and nothing is looked up by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import BaseRoute

from gateway.aggregate import Composer, UpstreamRefused, upstream_refused_handler
from gateway.auth import AuthenticationMiddleware, JwtVerifier, key_source
from gateway.edge.apikeys import ApiKeyResolver
from gateway.edge.authfailures import AuthFailures
from gateway.edge.caching import CachingMiddleware
from gateway.edge.deprecation import DeprecationMiddleware
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
from gateway.edge.store import RedisClient, StoreCaller
from gateway.graphql import graphiql
from gateway.graphql.router import graphql_router
from gateway.openapi import add_components, documented_bodies
from gateway.proxy import Upstreams
from gateway.realtime.hub import READ_WAIT_SECONDS, Hub
from gateway.realtime.relay import EventRelay, OrdersFeed, running
from gateway.realtime.store import EventStore, MemoryEventStore, RedisEventStore
from gateway.routes import aggregates, api_keys, orders, products, realtime, users, webhooks
from gateway.routes.forward import anonymous_forwards, deprecated_routes
from gateway.settings import FailureMode, GatewaySettings
from gateway.state import GatewaySlot, GatewayState
from shared.app import ReadinessCheck, add_health_routes, create_fastapi, install_common
from shared.contract import ANONYMOUS
from shared.http import CallPolicy, ServiceClient, UpstreamMetrics, create_http_client
from shared.identity import IdentitySigner
from shared.state import LifespanSlot, LifespanState, lifespan_state_of
from shared.telemetry import create_tracer_provider, set_global_provider_once, start_export

logger = logging.getLogger("portico.gateway")
# How long a stopping gateway waits for its WebSockets to close before the server cuts them.
DRAIN_SECONDS = 2.0


def _service_check(name: str) -> ReadinessCheck[GatewayState]:
    async def check(state: GatewayState) -> None:
        response = await state.upstreams[name].send("GET", "/health/ready", identity=ANONYMOUS)
        if response.status_code != 200:
            raise RuntimeError(f"{name} answered {response.status_code}")

    return check


async def _check_redis(state: GatewayState) -> None:
    assert state.redis is not None
    await state.redis.ping()


def create_redis(settings: GatewaySettings, *, wait_seconds: float = 0.0) -> RedisClient:
    """A bounded pool that waits briefly for a free connection; one immediate retry for a pooled
    connection that went stale (Redis restarted). Stage deadlines bound everything else.

    With `redis_cluster`, redis-py's cluster client instead, seeded with the URL's node: it finds the
    others and sends each script to the node that owns its keys' slot.

    `wait_seconds`: how long commands may block on the server (the event streams' blocking reads),
    added to the read timeout."""
    assert settings.redis_url is not None
    timeouts = {
        "socket_timeout": settings.redis_timeout_seconds + wait_seconds,
        "socket_connect_timeout": settings.redis_timeout_seconds,
        "retry": Retry(NoBackoff(), 1),
    }
    if settings.redis_cluster:
        # max_connections is per node here. reinitialize_steps=0: a MOVED answer only patches the
        # client's slot map (and the call follows the redirect). redis-py's default instead closes
        # the connections of every node on each 5th MOVED, which fails the other calls in flight on
        # them: under concurrency (a burst sent before the client had read the map, a slot moved
        # during a reshard) that turned redirects into errors and, through the retry, counted a
        # script twice. The whole map is still read again after a connection error or CLUSTERDOWN.
        return RedisCluster.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            reinitialize_steps=0,
            **timeouts,
        )
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_seconds,
        **timeouts,
    )
    return Redis.from_pool(pool)


@contextlib.asynccontextmanager
async def open_state(
    settings: GatewaySettings, provider: TracerProvider, metrics: EdgeMetrics, upstream_metrics: UpstreamMetrics
) -> AsyncIterator[GatewayState]:
    """Builds everything the gateway owns (the edge stores on Redis when configured, in-process
    otherwise) and closes it on the way out."""
    http = create_http_client(settings, provider)
    signer = IdentitySigner(settings.internal_token_secret.get_secret_value(), settings.internal_token_ttl_seconds)
    policy = CallPolicy(settings, upstream_metrics)
    upstreams = Upstreams(
        {name: ServiceClient(name, url, http, signer, policy) for name, url in settings.service_urls().items()}
    )
    redis: RedisClient | None = None
    rate_store: RateLimitStore
    idempotency_store: IdempotencyStore
    if settings.redis_url:
        redis = create_redis(settings)
        RedisInstrumentor.instrument_client(redis, tracer_provider=provider)
        rate_store = RedisRateLimitStore(redis, settings.redis_key_prefix)
        idempotency_store = RedisIdempotencyStore(redis, settings.redis_key_prefix)
    else:
        rate_store = MemoryRateLimitStore()
        idempotency_store = MemoryIdempotencyStore(settings.idempotency_memory_max_bytes)

    auth_failure_store: RateLimitStore = (
        RedisRateLimitStore(redis, settings.redis_key_prefix) if redis is not None else MemoryRateLimitStore()
    )

    def caller(stage: str, failure_mode: FailureMode) -> StoreCaller:
        # In-process stores do no I/O: a deadline would only cost time.
        timeout = settings.redis_timeout_seconds if redis is not None else None
        return StoreCaller(stage, timeout=timeout, mode=failure_mode, metrics=metrics)

    store: EventStore
    if redis is not None:
        blocking = create_redis(settings, wait_seconds=READ_WAIT_SECONDS)
        store = RedisEventStore(redis, blocking, settings.redis_key_prefix, settings.events_stream_maxlen)
    else:
        blocking, store = None, MemoryEventStore(settings.events_stream_maxlen)
    feed = OrdersFeed(upstreams["orders"])
    relay = EventRelay(
        feed,
        store,
        redis=redis,
        prefix=settings.redis_key_prefix,
        interval=settings.events_poll_interval_seconds,
        batch_size=settings.events_poll_batch_size,
        lease_seconds=settings.events_relay_lease_seconds,
        tracer=trace.get_tracer("portico.gateway.realtime", tracer_provider=provider),
    )
    hub = Hub(store, feed, buffer_size=settings.events_buffer_size)
    try:
        async with running(relay):
            yield GatewayState(
                settings=settings,
                http=http,
                upstreams=upstreams,
                composer=Composer(
                    upstreams,
                    trace.get_tracer("portico.gateway.aggregate", tracer_provider=provider),
                    settings.aggregate_timeout_seconds,
                ),
                redis=redis,
                rate_limiter=RateLimiter(rate_store, caller("rate_limit", settings.rate_limit_failure_mode)),
                idempotency=Idempotency(idempotency_store, caller("idempotency", settings.idempotency_failure_mode)),
                # Never fails open: while Redis fails, each process counts failures alone.
                auth_failures=AuthFailures(
                    RateLimiter(auth_failure_store, caller("auth_failures", "local")),
                    settings.auth_failure_limit,
                    metrics,
                ),
                api_keys=ApiKeyResolver(
                    upstreams["users"],
                    ttl_seconds=settings.api_key_cache_ttl_seconds,
                    max_entries=settings.api_key_cache_size,
                    max_unknown_entries=settings.api_key_negative_cache_size,
                    metrics=metrics,
                ),
                jwt_keys=key_source(settings, upstreams["users"]),
                events=hub,
                # One verifier (and one cache of verified tokens) for HTTP and WebSocket alike.
                tokens=JwtVerifier(settings),
            )
    finally:
        await hub.close()
        await asyncio.gather(http.aclose(), *(client.aclose() for client in (redis, blocking) if client is not None))


def edge_pipeline(
    routes: Sequence[BaseRoute], settings: GatewaySettings, metrics: EdgeMetrics, state: GatewaySlot
) -> list[Middleware]:
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
    stages.append(
        Middleware(
            AuthenticationMiddleware,
            state=state,
            anonymous=anonymous_forwards(routes),
            trusted_proxies=settings.trusted_proxies,
        )
    )
    if settings.rate_limit_enabled:
        policies = RoutePolicies(routes, settings)
        stages.append(Middleware(RateLimitMiddleware, settings=settings, routes=policies, metrics=metrics, state=state))
    if settings.idempotency_enabled:
        stages.append(Middleware(IdempotencyMiddleware, settings=settings, metrics=metrics, state=state))
    stages.append(Middleware(CachingMiddleware, etag=settings.etag_enabled))
    stages.append(Middleware(DeprecationMiddleware, routes=deprecated_routes(routes), counter=metrics.deprecated_calls))
    return stages


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    cfg = settings or GatewaySettings()
    provider = create_tracer_provider("gateway", cfg.trace_sample_ratio)
    set_global_provider_once(provider)
    edge_metrics = EdgeMetrics()
    registry = CollectorRegistry()
    upstream_metrics = UpstreamMetrics(registry)
    slot: GatewaySlot = LifespanSlot("the gateway's state")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[LifespanState[GatewayState]]:
        start_export(provider)
        try:
            async with open_state(cfg, provider, edge_metrics, upstream_metrics) as state:
                with slot.filled(state):
                    yield lifespan_state_of(state)
        finally:
            provider.shutdown()

    app = create_fastapi(cfg, "Portico API", lifespan)

    async def before_shutdown() -> None:
        # WebSockets close with 1013 (reconnect elsewhere) before the server stops.
        with contextlib.suppress(RuntimeError):  # outside the lifespan: nothing to close
            await slot.value.events.drain(DRAIN_SECONDS)

    app.state.before_shutdown = before_shutdown
    checks: dict[str, ReadinessCheck[GatewayState]] = {name: _service_check(name) for name in cfg.service_urls()}
    if cfg.redis_url:
        checks["redis"] = _check_redis
    add_health_routes(app, checks, timeout=cfg.ready_timeout_seconds)
    # The aggregate routes first: their paths are more specific than the forwarded ones around them.
    routers = [
        users.well_known,
        *(module.router for module in (aggregates, users, api_keys, products, orders, webhooks, realtime)),
    ]
    for router in routers:
        app.include_router(router)
    if cfg.docs_enabled:
        # Before the GraphQL router: its GET /graphql is GraphiQL's page.
        app.include_router(graphiql.router)
    graphql = graphql_router(cfg)
    app.include_router(graphql)
    routers.append(graphql)
    routes = [route for router in routers for route in router.routes]
    bodies = documented_bodies(routes)
    app.openapi_hooks.append(lambda schema: add_components(schema, bodies))
    # add_middleware wraps what is already there, so the stages go on innermost first; install_common
    # then adds stage 4 around them, and stages 1-3 (one layer) outside Starlette's error middleware.
    for stage in reversed(edge_pipeline(routes, cfg, edge_metrics, slot)):
        app.add_middleware(stage.cls, *stage.args, **stage.kwargs)
    http_metrics = install_common(app, cfg, provider, database=False, registry=registry)
    app.add_exception_handler(UpstreamRefused, upstream_refused_handler)
    edge_metrics.register(http_metrics.registry)
    return app
