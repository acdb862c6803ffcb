"""The gateway's lifespan state: everything the gateway owns while it runs, in one typed object.

`gateway/app.py` builds it in the lifespan (`open_state`) and closes it on the way out. Routes reach
its parts through the dependencies of `gateway/deps.py`; the edge stages, built before the lifespan
runs, through the `LifespanSlot` the lifespan fills (see `gateway/app.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from gateway.aggregate import Composer
from gateway.auth import JwtVerifier
from gateway.edge.apikeys import ApiKeyResolver
from gateway.edge.authfailures import AuthFailures
from gateway.edge.idempotency import Idempotency
from gateway.edge.jwks import KeySource
from gateway.edge.ratelimit import RateLimiter
from gateway.edge.store import RedisClient
from gateway.proxy import Upstreams
from gateway.realtime.hub import Hub
from gateway.settings import GatewaySettings
from shared.state import LifespanSlot


@dataclass(frozen=True, slots=True)
class GatewayState:
    settings: GatewaySettings
    # The one pooled downstream client, shared by every service client.
    http: httpx.AsyncClient
    upstreams: Upstreams
    # Runs the aggregate routes' parts through the upstreams, within their budget.
    composer: Composer
    # None: the stores are in-process (one gateway process).
    redis: RedisClient | None
    rate_limiter: RateLimiter
    idempotency: Idempotency
    # Failed authentications per client address (gateway/auth.py).
    auth_failures: AuthFailures
    api_keys: ApiKeyResolver
    # The keys access tokens are verified with (gateway/edge/jwks.py).
    jwt_keys: KeySource
    # Verifies access tokens, with its bounded cache of verified ones: for every request and WebSocket.
    tokens: JwtVerifier
    # The order events of every tenant, for /v1/events and /v1/ws.
    events: Hub


# What the edge stages are given when the pipeline is built; the lifespan fills it.
GatewaySlot = LifespanSlot[GatewayState]
