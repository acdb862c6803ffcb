"""The gateway's app factory. The edge pipeline, outermost first:

request context (id, access log) -> metrics -> body size limit -> authentication -> routes.
Tracing wraps all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from opentelemetry.instrumentation.redis import RedisInstrumentor
from redis.asyncio import Redis

from gateway.auth import AuthenticationMiddleware, JwtVerifier
from gateway.proxy import Upstreams
from gateway.routes import orders, products, users, webhooks
from gateway.settings import GatewaySettings
from shared.app import ReadinessCheck, add_health_routes, install_common
from shared.http import ServiceClient, create_http_client
from shared.identity import ANONYMOUS, IdentitySigner
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


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    provider = create_tracer_provider("gateway")
    set_global_provider_once(provider)
    cfg = settings

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
            redis = Redis.from_url(cfg.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
            RedisInstrumentor.instrument_client(redis, tracer_provider=provider)
            state["redis"] = redis
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
    # Innermost first; install_common adds the outer stages.
    app.add_middleware(AuthenticationMiddleware, verifier=JwtVerifier(settings))
    install_common(app, settings, provider)
    checks: dict[str, ReadinessCheck] = {name: _service_check(name) for name in settings.service_urls()}
    if settings.redis_url:
        checks["redis"] = _check_redis
    add_health_routes(app, checks, timeout=settings.ready_timeout_seconds)
    for module in (users, products, orders, webhooks):
        app.include_router(module.router)
    return app
