from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AnyHttpUrl, BeforeValidator, Field, PlainSerializer, model_validator
from pydantic_settings import NoDecode

from shared.contract import PROCESSES, SERVICES, Plan
from shared.settings import AccessTokenSettings, ListSetting, ProcessSettings, process_config

_QUOTA_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*s?\s*$")


@dataclass(frozen=True, slots=True)
class Quota:
    """`limit` requests per `window_seconds`; written `100/60s` in settings."""

    limit: int
    window_seconds: int

    def __str__(self) -> str:
        return f"{self.limit}/{self.window_seconds}s"


def _parse_quota(value: Any) -> Any:
    if isinstance(value, str):
        match = _QUOTA_RE.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a quota; write it as <requests>/<seconds>s, e.g. 100/60s")
        value = Quota(int(match[1]), int(match[2]))
    if isinstance(value, Quota) and (value.limit < 1 or value.window_seconds < 1):
        raise ValueError(f"{value} must allow at least 1 request in a window of at least 1 second")
    return value


QuotaSetting = Annotated[Quota, NoDecode, BeforeValidator(_parse_quota), PlainSerializer(str)]
# What a stage does when its store (Redis) fails: go on without it, refuse with 503, or (rate limits
# only) count in this process until the store answers again.
FailureMode = Literal["open", "closed", "local"]
IdempotencyFailureMode = Literal["open", "closed"]


class GatewaySettings(ProcessSettings, AccessTokenSettings):
    model_config = process_config("gateway")
    secret_fields: ClassVar[tuple[str, ...]] = ("internal_token_secret", "jwt_secret")

    port: int = PROCESSES["gateway"].port

    users_url: AnyHttpUrl = AnyHttpUrl(PROCESSES["users"].default_url)
    orders_url: AnyHttpUrl = AnyHttpUrl(PROCESSES["orders"].default_url)
    inventory_url: AnyHttpUrl = AnyHttpUrl(PROCESSES["inventory"].default_url)
    webhooks_url: AnyHttpUrl = AnyHttpUrl(PROCESSES["webhooks"].default_url)

    # Unset: in-process stores (one gateway process). Set: Redis, shared by every gateway instance.
    redis_url: str | None = None
    # True: `redis_url` names a node of a Redis Cluster, reached through redis-py's cluster client.
    # Every script's keys share a hash tag (the tenant or client address), so each runs on one node.
    redis_cluster: bool = False
    # Every key the gateway writes starts with this, so several deployments (or test runs) can share
    # one Redis. No braces: the first {...} of a key is its Redis Cluster hash tag.
    redis_key_prefix: str = Field(default="portico:", pattern=r"^[^{}]*$")

    # RS256: the users service's public key, PEM. Unset: the keys of its JWKS (/.well-known/jwks.json),
    # fetched again on an unknown kid at most once per `jwks_refresh_seconds`, and once they are
    # `jwks_max_age_seconds` old.
    jwt_public_key: str | None = None
    jwks_refresh_seconds: float = Field(default=10.0, gt=0)
    jwks_max_age_seconds: float = Field(default=300.0, gt=0)
    # Verified access tokens remembered until they expire, per process (0: none).
    jwt_cache_size: int = Field(default=10_000, ge=0)
    # Tokens are accepted this many seconds past `exp` to absorb clock skew between hosts.
    jwt_leeway_seconds: int = 10

    ready_timeout_seconds: float = 2.0

    # --- Aggregate routes (dashboard, order validation): every part and check, and so the whole
    # answer, ends within this budget whatever a service does.
    aggregate_timeout_seconds: float = Field(default=1.0, gt=0, le=60)

    # --- Redis (rate limits and idempotency records; unset: in-process stores)
    # Every store call gives up after this long and follows its stage's failure mode.
    redis_timeout_seconds: float = Field(default=1.0, gt=0, le=10)
    redis_max_connections: int = Field(default=200, ge=1)

    # --- API keys
    # How long a resolved key (or an unknown one) is remembered by one gateway process: the bound on
    # how long a revoked key keeps working there.
    api_key_cache_ttl_seconds: float = Field(default=5.0, ge=0, le=300)
    api_key_cache_size: int = Field(default=10_000, ge=1)
    # Unknown keys are remembered apart, so a flood of them never evicts keys that work.
    api_key_negative_cache_size: int = Field(default=10_000, ge=1)

    # --- Failed authentication (bad JWT, unknown API key, wrong password, taken email at sign-up),
    # counted per client address whatever credential is sent; past the limit, 429 before any
    # downstream call. Counted in Redis when configured, in-process while Redis fails (never open).
    auth_failure_limit: QuotaSetting = Quota(30, 60)

    # --- Rate limits: per tenant by plan, per client address for anonymous callers
    rate_limit_enabled: bool = True
    rate_limit_free: QuotaSetting = Quota(100, 60)
    rate_limit_pro: QuotaSetting = Quota(1_000, 60)
    rate_limit_enterprise: QuotaSetting = Quota(10_000, 60)
    rate_limit_anonymous: QuotaSetting = Quota(600, 60)
    # Extra quotas for single routes ("METHOD /route/template"), counted on top of the plan's.
    rate_limit_routes: dict[str, QuotaSetting] = Field(
        default_factory=lambda: {"POST /v1/auth/token": Quota(120, 60), "POST /v1/tenants": Quota(120, 60)}
    )
    rate_limit_failure_mode: FailureMode = "local"
    rate_limit_exempt_paths: ListSetting = Field(default_factory=lambda: ["/health/live", "/health/ready", "/metrics"])
    # Peers whose X-Forwarded-For is believed (addresses or CIDRs): load balancers in front of the gateway.
    trusted_proxies: ListSetting = Field(default_factory=list)

    # --- Idempotency
    idempotency_enabled: bool = True
    idempotency_ttl_seconds: int = Field(default=86_400, ge=1)
    # A request that crashed its process leaves a lock that expires after this long.
    idempotency_lock_seconds: float = Field(default=30.0, gt=0)
    idempotency_failure_mode: IdempotencyFailureMode = "closed"
    idempotency_max_response_bytes: int = Field(default=1024 * 1024, ge=0)
    # The in-process store (no Redis): what its kept answers may add up to; the oldest go first.
    idempotency_memory_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)

    # --- HTTP hygiene
    security_headers_enabled: bool = True
    # 0 leaves Strict-Transport-Security off; set it when clients reach the gateway over TLS.
    hsts_max_age_seconds: int = Field(default=0, ge=0)
    hsts_include_subdomains: bool = False
    trusted_hosts: ListSetting = Field(default_factory=lambda: ["*"])
    cors_allow_origins: ListSetting = Field(default_factory=list)
    cors_allow_credentials: bool = False
    cors_max_age_seconds: int = Field(default=600, ge=0)
    gzip_enabled: bool = True
    gzip_minimum_bytes: int = Field(default=500, ge=0)
    gzip_level: int = Field(default=6, ge=1, le=9)
    etag_enabled: bool = True

    # --- Real time (/v1/events, /v1/ws)
    # A comment line on every idle SSE stream this often (keeps proxies from closing it).
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0, le=300)
    # The `retry:` hint: how long an SSE client waits before it reconnects.
    sse_retry_ms: int = Field(default=2_000, ge=0, le=600_000)
    # Events one connection may fall behind before it is closed (its client resumes from its last id).
    events_buffer_size: int = Field(default=256, ge=1, le=100_000)
    # A send to a client that takes longer than this closes the connection (a stalled reader).
    events_send_timeout_seconds: float = Field(default=10.0, gt=0)
    # About this many events are kept per tenant stream; older ones are read back from the orders feed.
    events_stream_maxlen: int = Field(default=10_000, ge=10)
    # How often the relay asks the orders feed for new events when it has nothing to do.
    events_poll_interval_seconds: float = Field(default=0.2, gt=0, le=5)
    events_poll_batch_size: int = Field(default=500, ge=1, le=500)
    # With Redis, the instance that relays holds a lease this long (renewed every poll); another
    # instance takes over within this time after it dies.
    events_relay_lease_seconds: float = Field(default=3.0, gt=0)
    # Connections (SSE and WebSocket together) one tenant may hold open on one gateway instance.
    realtime_connections_free: int = Field(default=5, ge=0)
    realtime_connections_pro: int = Field(default=100, ge=0)
    realtime_connections_enterprise: int = Field(default=1_000, ge=0)

    # --- GraphQL (POST /graphql): bounds checked before anything is resolved
    # Tokens the parser reads in one document (braces, names, colons...) before refusing it.
    graphql_max_tokens: int = Field(default=2_000, ge=1)
    graphql_max_depth: int = Field(default=8, ge=1, le=50)
    graphql_max_aliases: int = Field(default=10, ge=0, le=1000)
    # Each field costs 1, times the `limit` of every page above it (see gateway/graphql/limits.py).
    graphql_max_cost: int = Field(default=2_000, ge=1)
    # How often one response name may be selected at one place of the answer (the same field asked
    # for again there, directly or through fragments): GraphQL's validation compares every pair.
    graphql_max_field_repeats: int = Field(default=10, ge=1, le=100)

    @model_validator(mode="after")
    def _key_for_algorithm(self) -> GatewaySettings:
        if self.jwt_algorithm == "HS256" and self.jwt_secret is None:
            raise ValueError("GATEWAY_JWT_SECRET is required with HS256")
        return self

    @model_validator(mode="after")
    def _edge(self) -> GatewaySettings:
        if self.idempotency_lock_seconds <= self.http_timeout_seconds:
            # A lock that expired while its request still ran would let a retry run the request twice.
            raise ValueError("GATEWAY_IDEMPOTENCY_LOCK_SECONDS must exceed GATEWAY_HTTP_TIMEOUT_SECONDS")
        for route in self.rate_limit_routes:
            method, _, path = route.partition(" ")
            if method.upper() != method or not path.startswith("/"):
                raise ValueError(f"rate_limit_routes key {route!r} must read 'METHOD /path/template'")
        for proxy in self.trusted_proxies:
            ipaddress.ip_network(proxy, strict=False)
        if "*" in self.cors_allow_origins and self.cors_allow_credentials:
            raise ValueError("CORS credentials cannot be allowed for every origin ('*')")
        return self

    def plan_quotas(self) -> dict[Plan, Quota]:
        """Each plan's per-tenant quota (a caller without a known plan is counted as DEFAULT_PLAN)."""
        return {"free": self.rate_limit_free, "pro": self.rate_limit_pro, "enterprise": self.rate_limit_enterprise}

    def realtime_connection_caps(self) -> dict[Plan, int]:
        return {
            "free": self.realtime_connections_free,
            "pro": self.realtime_connections_pro,
            "enterprise": self.realtime_connections_enterprise,
        }

    def service_urls(self) -> dict[str, str]:
        urls = {
            "users": self.users_url,
            "orders": self.orders_url,
            "inventory": self.inventory_url,
            "webhooks": self.webhooks_url,
        }
        return {name: str(urls[name]) for name in SERVICES}
