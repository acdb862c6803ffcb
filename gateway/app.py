"""The gateway's app factory and its lifespan.

Every request passes, outermost first (all pure ASGI):

1-3. observability   request id, server span (continues `traceparent`),    shared/middleware.py
                     metrics, access log                                    shared/telemetry.py
     (Starlette's error middleware, which renders unhandled exceptions as 500)
 4. body size limit  413 before the body is read                           shared/middleware.py
 5. the edge         route match, hygiene, admission, authentication,      gateway/edge/pipeline.py
                     rate limit, idempotency, the forwarded routes themselves, caching,
                     deprecation, gzip: one layer, one pass
 6. FastAPI          the routes that are not forwarded: aggregates, real    gateway/routes/*.py
                     time, GraphQL, docs, probes

The edge's stages can be switched off by settings (hygiene, rate limit, idempotency, ETags, gzip; the
benchmark measures each one). What a stage hands the next (the request id, the route, the caller) is
in the request context (`shared/context.py`).

Everything that holds a connection or state (the HTTP pool, Redis, the stores, the API key cache) is
built in the lifespan (`open_state`) as one `GatewayState` (`gateway/state.py`). Routes reach it
through `gateway/deps.py`; the edge is handed the parts it uses, as one `EdgeRuntime`, for the life
of the lifespan (`Edge.running`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.routing import BaseRoute

from gateway.composer import Composer, UpstreamRefused, upstream_refused_handler
from gateway.edge.addresses import ClientAddress
from gateway.edge.apikeys import ApiKeyResolver
from gateway.edge.authentication import Authenticator, JwtVerifier, key_source
from gateway.edge.authfailures import AuthFailures
from gateway.edge.forwarding import Forwarder
from gateway.edge.idempotency import Idempotency, IdempotencyStore, MemoryIdempotencyStore, RedisIdempotencyStore
from gateway.edge.metering import (
    MemoryThresholdMarks,
    MemoryUsageStore,
    Metering,
    QuotaAnnouncer,
    RedisThresholdMarks,
    RedisUsageStore,
    ThresholdMarks,
    UsageReader,
    UsageStore,
)
from gateway.edge.metrics import SPARSE_GAUGES, EdgeMetrics
from gateway.edge.pipeline import Edge, EdgeRuntime
from gateway.edge.ratelimit import (
    MemoryRateLimitStore,
    MonthlyQuotas,
    RateLimiter,
    RateLimits,
    RateLimitStore,
    RedisRateLimitStore,
    route_quotas,
)
from gateway.edge.router import RouteTable
from gateway.edge.store import RedisClient, ScriptBatcher, StoreCaller
from gateway.graphql import graphiql
from gateway.graphql.router import graphql_router
from gateway.openapi import add_components, describe_api
from gateway.realtime.hub import READ_WAIT_SECONDS, Hub
from gateway.realtime.relay import EventRelay, OrdersFeed, running
from gateway.realtime.streams import EventStore, MemoryEventStore, RedisEventStore
from gateway.routes import aggregates, api_keys, events, orders, products, usage, users, webhooks
from gateway.routes.forward import ForwardRouter, compiled_routes
from gateway.settings import FailureMode, GatewaySettings, Quota
from gateway.state import GatewayState
from gateway.upstreams import Upstreams
from shared.admission import AdmissionMetrics
from shared.app import ReadinessCheck, add_health_routes, create_fastapi, install_common
from shared.calls import CallPolicy, UpstreamMetrics
from shared.contract import ANONYMOUS, READY_PATH
from shared.http import ServiceClient
from shared.identity_token import IdentitySigner
from shared.loops import running_loop
from shared.pool import create_http_pool
from shared.state import LifespanState, lifespan_state_of
from shared.telemetry import create_tracer_provider, set_global_provider_once, start_export

logger = logging.getLogger("portico.gateway")
# How long a stopping gateway waits for its WebSockets to close before the server cuts them.
DRAIN_SECONDS = 2.0


def _service_check(name: str) -> ReadinessCheck[GatewayState]:
    async def check(state: GatewayState) -> None:
        response = await state.upstreams[name].send("GET", READY_PATH, identity=ANONYMOUS)
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


# The forwarded routes, in the order they are added (a route earlier in a router wins a tie).
FORWARD_ROUTERS: tuple[ForwardRouter, ...] = (
    users.well_known,
    users.router,
    api_keys.router,
    products.router,
    orders.router,
    webhooks.router,
)


@contextlib.asynccontextmanager
async def open_state(
    settings: GatewaySettings,
    provider: TracerProvider,
    metrics: EdgeMetrics,
    upstream_metrics: UpstreamMetrics,
    quotas: dict[tuple[str, str], Quota],
) -> AsyncIterator[GatewayState]:
    """Builds everything the gateway owns (the edge stores on Redis when configured, in-process
    otherwise) and closes it on the way out."""
    http = create_http_pool(settings, provider)
    signer = IdentitySigner(settings.internal_token_secret.get_secret_value(), settings.internal_token_ttl_seconds)
    policy = CallPolicy(settings, upstream_metrics, provider)
    upstreams = Upstreams(
        {
            name: ServiceClient(name, url, http.client, signer, policy, session=http.session)
            for name, url in settings.service_urls().items()
        }
    )
    redis: RedisClient | None = None
    scripts: ScriptBatcher | None = None
    rate_store: RateLimitStore
    idempotency_store: IdempotencyStore
    counts: RedisRateLimitStore | None = None
    usage_store: UsageStore
    marks: ThresholdMarks
    retention = settings.usage_retention_days * 86_400
    if settings.redis_url:
        # The edge's Redis work is recorded as events on the request's span (`RequestContext.event`),
        # not as a span per command.
        redis = create_redis(settings)
        scripts = ScriptBatcher(redis, timeout=settings.redis_timeout_seconds)
        rate_store = counts = RedisRateLimitStore(scripts, settings.redis_key_prefix)
        idempotency_store = RedisIdempotencyStore(scripts, settings.redis_key_prefix)
        usage_store = RedisUsageStore(redis, settings.redis_key_prefix, retention)
        marks = RedisThresholdMarks(redis, counts)
    else:
        rate_store = memory_counts = MemoryRateLimitStore()
        idempotency_store = MemoryIdempotencyStore(settings.idempotency_memory_max_bytes)
        usage_store = MemoryUsageStore(retention)
        marks = MemoryThresholdMarks(memory_counts)

    def caller(stage: str, failure_mode: FailureMode) -> StoreCaller:
        return StoreCaller(stage, io=redis is not None, mode=failure_mode, metrics=metrics)

    rate_limiter = RateLimiter(rate_store, caller("rate_limit", settings.rate_limit_failure_mode))
    api_keys = ApiKeyResolver(
        upstreams["users"],
        ttl_seconds=settings.api_key_cache_ttl_seconds,
        max_entries=settings.api_key_cache_size,
        max_unknown_entries=settings.api_key_negative_cache_size,
        metrics=metrics,
    )
    authenticator = Authenticator(
        tokens=JwtVerifier(settings),
        keys=key_source(settings, upstreams["users"]),
        api_keys=api_keys,
        # Never fails open: while Redis fails, each process counts failures alone.
        failures=AuthFailures(
            RateLimiter(counts or MemoryRateLimitStore(), caller("auth_failures", "local")),
            settings.auth_failure_limit,
            metrics,
        ),
        client_address=ClientAddress(settings.trusted_proxies),
    )
    rate_limits = RateLimits(settings, rate_limiter, metrics, quotas) if settings.rate_limit_enabled else None
    announcer = QuotaAnnouncer(marks, upstreams["orders"])
    if rate_limits is not None:
        rate_limits.announcer = announcer
    metering = (
        Metering(usage_store, caller("usage", "local"), metrics, flush_seconds=settings.usage_flush_seconds)
        if settings.usage_enabled
        else None
    )
    edge = EdgeRuntime(
        authenticator=authenticator,
        rate_limits=rate_limits,
        idempotency=(
            Idempotency(
                idempotency_store,
                caller("idempotency", settings.idempotency_failure_mode),
                settings,
                metrics,
                counts=counts,
            )
            if settings.idempotency_enabled
            else None
        ),
        forwarder=Forwarder(upstreams, api_keys),
        metering=metering,
    )

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
        async with running(relay), contextlib.AsyncExitStack() as loops:
            if metering is not None:
                await loops.enter_async_context(
                    running_loop(metering.export_loop, name="usage-export", stop_timeout=1.0, logger=logger)
                )
                # Stopped after the server has answered its last request: its last counts are written then.
                await loops.enter_async_context(
                    running_loop(metering.flush_loop, name="usage-flush", stop_timeout=5.0, logger=logger)
                )
            yield GatewayState(
                settings=settings,
                upstreams=upstreams,
                composer=Composer(
                    upstreams,
                    trace.get_tracer("portico.gateway.composer", tracer_provider=provider),
                    settings.aggregate_timeout_seconds,
                ),
                redis=redis,
                authenticator=authenticator,
                events=hub,
                edge=edge,
                usage=UsageReader(usage_store, marks, MonthlyQuotas(settings)),
            )
    finally:
        await hub.close()
        await announcer.aclose()
        if scripts is not None:
            await scripts.aclose()
        await asyncio.gather(
            http.aclose(), policy.aclose(), *(client.aclose() for client in (redis, blocking) if client is not None)
        )


def routes_of(app: FastAPI, routers: Iterable[object]) -> list[BaseRoute]:
    """The routes FastAPI runs: the app's own and those of `routers` (FastAPI includes a router as one
    entry of the app's routes)."""
    found = [route for route in app.router.routes if getattr(route, "path", None) is not None]
    found += [route for router in routers for route in getattr(router, "routes", ())]
    return found


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    cfg = settings or GatewaySettings()
    provider = create_tracer_provider("gateway", cfg.trace_sample_ratio)
    set_global_provider_once(provider)
    registry = CollectorRegistry()
    edge_metrics = EdgeMetrics(registry)
    upstream_metrics = UpstreamMetrics(registry)
    edge = Edge(settings=cfg, metrics=edge_metrics, admission=AdmissionMetrics(registry))
    quotas: dict[tuple[str, str], Quota] = {}
    current: GatewayState | None = None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[LifespanState[GatewayState]]:
        nonlocal current
        start_export(provider)
        try:
            async with open_state(cfg, provider, edge_metrics, upstream_metrics, quotas) as state:
                current = state
                with edge.running(state.edge):
                    yield lifespan_state_of(state, edge.shedder(state.edge))
        finally:
            current = None
            provider.shutdown()

    app = create_fastapi(cfg, "Portico API", lifespan)

    async def before_shutdown() -> None:
        # WebSockets close with 1013 (reconnect elsewhere) before the server stops.
        if current is not None:
            await current.events.drain(DRAIN_SECONDS)

    app.state.before_shutdown = before_shutdown
    checks: dict[str, ReadinessCheck[GatewayState]] = {name: _service_check(name) for name in cfg.service_urls()}
    if cfg.redis_url:
        checks["redis"] = _check_redis
    add_health_routes(app, checks, timeout=cfg.ready_timeout_seconds)
    # The aggregate routes first: their paths are more specific than the forwarded ones around them.
    others = [aggregates.router]
    app.include_router(aggregates.router)
    for router in FORWARD_ROUTERS:
        # For the reference only: the edge answers these routes (`gateway/routes/forward.py`).
        app.include_router(router.docs)
    app.include_router(events.router)
    others.append(events.router)
    app.include_router(usage.router)
    others.append(usage.router)
    if cfg.docs_enabled:
        # Before the GraphQL router: its GET /graphql is GraphiQL's page.
        app.include_router(graphiql.router)
        others.append(graphiql.router)
    graphql = graphql_router(cfg)
    app.include_router(graphql)
    others.append(graphql)
    bodies = [body.model for router in FORWARD_ROUTERS for body in router.documented_bodies]
    app.openapi_hooks.append(lambda schema: add_components(schema, list(dict.fromkeys(bodies))))
    features = {router.feature: router.plans for router in FORWARD_ROUTERS if router.plans}
    # `quotas` is filled below, once the routes are known; the document is made on first request.
    app.openapi_hooks.append(lambda schema: describe_api(schema, cfg, features, quotas))
    # add_middleware wraps what is already there, so the edge goes on first (innermost); install_common
    # then adds the body limit around it, and observability (one layer) outside Starlette's errors.
    app.add_middleware(edge.wrap)
    install_common(app, cfg, provider, registry=registry, admission=False, sparse=SPARSE_GAUGES)
    app.add_exception_handler(UpstreamRefused, upstream_refused_handler)
    forwards = compiled_routes(FORWARD_ROUTERS)
    edge.table = RouteTable(forwards, routes_of(app, others))
    rows = {(route.method, route.path): route.rate_limit for route in forwards if route.rate_limit is not None}
    quotas.update(route_quotas(rows, cfg, edge.table.routes()))
    return app
