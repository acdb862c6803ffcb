from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, NonNegativeInt, PlainSerializer, PositiveFloat, model_validator
from pydantic_settings import NoDecode

from shared.contract import PLANS, PROBE_PATHS, PROCESSES, SERVICES, Plan
from shared.events import FEED_MAX_LIMIT
from shared.settings import (
    AccessTokenSettings,
    AtLeastOne,
    ListSetting,
    ProcessSettings,
    ServiceAddress,
    ServiceAddressSetting,
    process_config,
    service_url,
)

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
# Requests per calendar month (UTC); None: unlimited.
MonthlyQuota = Annotated[int | None, Field(ge=1)]


class GatewaySettings(ProcessSettings, AccessTokenSettings):
    model_config = process_config("gateway")
    secret_fields: ClassVar[tuple[str, ...]] = ("internal_token_secret", "jwt_secret")

    port: int = PROCESSES["gateway"].port
    """The port the gateway listens on."""

    users_url: ServiceAddressSetting = service_url("users")
    orders_url: ServiceAddressSetting = service_url("orders")
    inventory_url: ServiceAddressSetting = service_url("inventory")
    webhooks_url: ServiceAddressSetting = service_url("webhooks")

    redis_url: str | None = None
    """Unset: in-process stores (one gateway process). Set: Redis, shared by every gateway instance, for rate limits,
    idempotency records and event streams."""
    # Every script's keys share a hash tag (the tenant or client address), so each runs on one node.
    redis_cluster: bool = False
    """True: `redis_url` names a node of a Redis Cluster, reached through redis-py's cluster client."""
    redis_key_prefix: Annotated[str, Field(pattern=r"^[^{}]*$")] = "portico:"
    """Every key the gateway writes starts with this, so several deployments (or test runs) can share one Redis. No
    braces: the first {...} of a key is its Redis Cluster hash tag."""

    jwt_public_key: str | None = None
    """RS256: the users service's public key, PEM. Unset: the keys of its JWKS (/.well-known/jwks.json), fetched again
    on an unknown kid at most once per `jwks_refresh_seconds`, and once they are `jwks_max_age_seconds` old."""
    jwks_refresh_seconds: PositiveFloat = 10.0
    """RS256 without `jwt_public_key`: an unknown `kid` fetches the JWKS again at most this often."""
    jwks_max_age_seconds: PositiveFloat = 300.0
    """The JWKS is fetched again once it is this old, so retired keys go away."""
    jwt_cache_size: NonNegativeInt = 10_000
    """Verified access tokens remembered per process until they expire, oldest dropped first (0: none)."""
    jwt_leeway_seconds: int = 10
    """Tokens are accepted this many seconds past `exp`, to absorb clock skew between hosts."""

    ready_timeout_seconds: float = 2.0
    """How long `/health/ready` waits for each dependency's check."""

    aggregate_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    """The budget of an aggregate route (dashboard, order validation): every part and check, and so the whole answer,
    ends within it whatever a service does."""

    # --- Redis (rate limits and idempotency records; unset: in-process stores)
    redis_timeout_seconds: Annotated[float, Field(gt=0, le=10)] = 1.0
    """Deadline of each store call (and the socket, connect and pool timeouts); past it the call follows its stage's
    failure mode."""
    redis_max_connections: AtLeastOne = 200
    """The Redis pool of each gateway process (per node on a cluster)."""

    # --- API keys
    api_key_cache_ttl_seconds: Annotated[float, Field(ge=0, le=300)] = 5.0
    """How long a resolved (or unknown) API key is remembered by one gateway process: the bound on how long a revoked
    key keeps working there. 0 asks the users service on every request."""
    api_key_cache_size: AtLeastOne = 10_000
    """Working API keys remembered per process (oldest dropped first)."""
    api_key_negative_cache_size: AtLeastOne = 10_000
    """Unknown, revoked or expired API keys remembered per process, apart from the working ones, so a flood of them
    never evicts keys that work."""

    auth_failure_limit: QuotaSetting = Quota(30, 60)
    """Failed authentications (bad JWT, unknown API key, wrong password, taken email at sign-up) per client address,
    whatever credential is sent; past it, 429 before any upstream call. Counted in Redis when configured, in-process
    while Redis fails (never open)."""

    # --- Rate limits: per tenant by plan, per client address for anonymous callers
    admission_plan_shares: dict[str, float] = Field(
        default_factory=lambda: {"anonymous": 0.2, "free": 0.2, "pro": 0.4, "enterprise": 1.0}
    )
    """The share of the adaptive limit each plan's requests may fill (JSON; `anonymous` for callers without
    credentials): a request is admitted while fewer requests are in progress than its plan's share of the limit, so
    under pressure the lower shares are refused first (503 `OVERLOADED`). Under overload the requests in progress share
    the CPU, so a plan's share bounds its share of the work: enterprise keeps at least 60% of the limit to itself."""
    rate_limit_enabled: bool = True
    """The rate limit stage."""
    rate_limit_free: QuotaSetting = Quota(100, 60)
    """Per-tenant quota of the free plan (and of a caller whose plan is unknown)."""
    rate_limit_pro: QuotaSetting = Quota(1_000, 60)
    """Per-tenant quota of the pro plan."""
    rate_limit_enterprise: QuotaSetting = Quota(10_000, 60)
    """Per-tenant quota of the enterprise plan."""
    rate_limit_anonymous: QuotaSetting = Quota(600, 60)
    """Per client address, for callers without credentials."""
    rate_limit_routes: dict[str, QuotaSetting] = Field(default_factory=dict)
    """Routes' own quotas by `"METHOD /route/template"` (JSON), counted on top of the plan's. One given here replaces
    the quota the route declares (login and sign-up: 120/60s each); a template that is not a route stops the start."""
    rate_limit_failure_mode: FailureMode = "local"
    """When the store fails: `local` (each process counts alone until Redis answers), `open` (no limit) or `closed`
    (503)."""
    rate_limit_exempt_paths: ListSetting = Field(default_factory=lambda: list(PROBE_PATHS))
    """Paths never counted."""
    # --- Usage and monthly quotas (gateway/edge/metering.py)
    usage_enabled: bool = True
    """Metering: every answer to a tenant counted by route template, status class and hour (`GET /v1/usage`)."""
    usage_flush_seconds: Annotated[float, Field(gt=0, le=60)] = 0.1
    """How often each gateway process writes the answers it counted to Redis, in one pipeline. A process killed outright
    loses at most this long of its counts; one that stops writes them first."""
    usage_retention_days: Annotated[int, Field(ge=1, le=400)] = 62
    """How long each hour's usage counts are kept (in Redis, or in this process when embedded)."""
    quota_free: MonthlyQuota = 100_000
    """Requests per calendar month (UTC) of a free tenant (and of a caller whose plan is unknown)."""
    quota_pro: MonthlyQuota = 10_000_000
    """Requests per calendar month of a pro tenant."""
    quota_enterprise: MonthlyQuota = None
    """Requests per calendar month of an enterprise tenant (unset: unlimited)."""
    trusted_proxies: ListSetting = Field(default_factory=list)
    """Peers whose X-Forwarded-For is believed (addresses or CIDRs): the load balancers in front of the gateway."""

    # --- Idempotency
    idempotency_enabled: bool = True
    """The idempotency stage."""
    idempotency_ttl_seconds: AtLeastOne = 86_400
    """How long a first answer is kept and replayed."""
    idempotency_lock_seconds: PositiveFloat = 30.0
    """The lock of a request in flight, which a process that died mid-request leaves to expire; must exceed
    `http_timeout_seconds`."""
    idempotency_failure_mode: IdempotencyFailureMode = "closed"
    """When the store fails: `open` (run without idempotency) or `closed` (503)."""
    idempotency_max_response_bytes: NonNegativeInt = 1024 * 1024
    """Larger answers are not kept (a repeat gets 409)."""
    idempotency_memory_max_bytes: NonNegativeInt = 64 * 1024 * 1024
    """Without Redis: what the in-process store's kept answers may add up to; past it the oldest go first."""

    # --- HTTP hygiene
    security_headers_enabled: bool = True
    """The security headers on every answer."""
    hsts_max_age_seconds: NonNegativeInt = 0
    """`Strict-Transport-Security` max-age; 0 leaves it off. Set it when clients reach the gateway over TLS."""
    hsts_include_subdomains: bool = False
    """Adds `includeSubDomains` to HSTS."""
    trusted_hosts: ListSetting = Field(default_factory=lambda: ["*"])
    """Allowed `Host` names (`*.example.com` matches subdomains); `*` turns the check off."""
    cors_allow_origins: ListSetting = Field(default_factory=list)
    """Origins allowed to call from a browser (`*` for any); empty turns CORS off."""
    cors_allow_credentials: bool = False
    """CORS with credentials (refused together with `*` origins)."""
    cors_max_age_seconds: NonNegativeInt = 600
    """How long a browser may keep a preflight's answer."""
    gzip_enabled: bool = True
    """gzip for clients that accept it."""
    gzip_minimum_bytes: NonNegativeInt = 500
    """Smaller answers are not compressed."""
    gzip_level: Annotated[int, Field(ge=1, le=9)] = 6
    """The gzip compression level."""
    etag_enabled: bool = True
    """Weak ETags and 304 on GET."""

    # --- Real time (/v1/events, /v1/ws)
    sse_heartbeat_seconds: Annotated[float, Field(gt=0, le=300)] = 15.0
    """A comment line on every idle SSE stream this often (keeps proxies from closing it)."""
    sse_retry_ms: Annotated[int, Field(ge=0, le=600_000)] = 2_000
    """The `retry:` hint sent when a stream opens: how long an SSE client waits before it reconnects."""
    events_buffer_size: Annotated[int, Field(ge=1, le=100_000)] = 256
    """Events one connection may fall behind before it is closed (its client resumes from its last id)."""
    events_send_timeout_seconds: PositiveFloat = 10.0
    """A send to a client that takes longer than this closes the connection (a stalled reader)."""
    events_stream_maxlen: Annotated[int, Field(ge=10)] = 10_000
    """About this many events are kept per tenant stream (older ones are read back from the orders feed), and in the
    live stream all instances read."""
    events_poll_interval_seconds: Annotated[float, Field(gt=0, le=5)] = 0.2
    """How often the relay asks the orders feed for new events when it has nothing to do."""
    events_poll_batch_size: Annotated[int, Field(ge=1, le=FEED_MAX_LIMIT)] = FEED_MAX_LIMIT
    """Events per feed page (a full page is followed at once)."""
    events_relay_lease_seconds: PositiveFloat = 3.0
    """With Redis, the instance that relays holds a lease this long (renewed every poll); another instance takes over
    within this time after it dies."""
    realtime_connections_free: NonNegativeInt = 5
    """Connections (SSE and WebSocket together) a free tenant may hold open on one gateway instance."""
    realtime_connections_pro: NonNegativeInt = 100
    """The same for a pro tenant."""
    realtime_connections_enterprise: NonNegativeInt = 1_000
    """The same for an enterprise tenant."""

    # --- GraphQL (POST /graphql): bounds checked before anything is resolved
    graphql_max_tokens: AtLeastOne = 2_000
    """Tokens the parser reads in one document (braces, names, colons...) before refusing it."""
    graphql_max_depth: Annotated[int, Field(ge=1, le=50)] = 8
    """The deepest an operation may nest (fields with a selection); deeper is `QUERY_TOO_DEEP`."""
    graphql_max_aliases: Annotated[int, Field(ge=0, le=1000)] = 10
    """Aliases one document may hold, fragments counted where spread; more is `TOO_MANY_ALIASES`."""
    graphql_max_cost: AtLeastOne = 2_000
    """Each field costs 1, times the most items of every list above it: a page's `limit`, an order's lines (see
    gateway/graphql/limits.py); a costlier document is refused with `QUERY_TOO_COSTLY`."""
    graphql_max_field_repeats: Annotated[int, Field(ge=1, le=100)] = 10
    """How often one response name may be selected at one place of the answer (the same field asked for again there,
    directly or through fragments), as GraphQL's validation compares every pair of them; more is
    `FIELD_REPEATED_TOO_OFTEN`."""

    @model_validator(mode="after")
    def _key_for_algorithm(self) -> GatewaySettings:
        if self.jwt_algorithm == "HS256" and self.jwt_secret is None:
            raise ValueError("GATEWAY_JWT_SECRET is required with HS256")
        return self

    @model_validator(mode="after")
    def _plan_shares(self) -> GatewaySettings:
        ranked = ("anonymous", *PLANS)
        for plan, share in self.admission_plan_shares.items():
            if plan not in ranked:
                raise ValueError(f"GATEWAY_ADMISSION_PLAN_SHARES: {plan!r} is not one of {', '.join(ranked)}")
            if not 0 < share <= 1:
                raise ValueError(f"GATEWAY_ADMISSION_PLAN_SHARES: the share of {plan} must be in (0, 1]")
        # A plan left out has the whole limit; a better plan never has less than a lower one (the
        # server's protocol, which ranks callers before the route is known, relies on it).
        shares = [self.admission_plan_shares.get(plan, 1.0) for plan in ranked]
        if shares != sorted(shares):
            raise ValueError(
                "GATEWAY_ADMISSION_PLAN_SHARES: a plan's share may not be below a lower plan's "
                f"({', '.join(f'{plan} {share:g}' for plan, share in zip(ranked, shares, strict=True))}; "
                "a plan left out has 1)"
            )
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

    def monthly_quotas(self) -> dict[str, int | None]:
        """Each plan's requests per calendar month (None: unlimited)."""
        return {"free": self.quota_free, "pro": self.quota_pro, "enterprise": self.quota_enterprise}

    def realtime_connection_caps(self) -> dict[Plan, int]:
        return {
            "free": self.realtime_connections_free,
            "pro": self.realtime_connections_pro,
            "enterprise": self.realtime_connections_enterprise,
        }

    def service_urls(self) -> dict[str, ServiceAddress]:
        urls = {
            "users": self.users_url,
            "orders": self.orders_url,
            "inventory": self.inventory_url,
            "webhooks": self.webhooks_url,
        }
        return {name: urls[name] for name in SERVICES}
