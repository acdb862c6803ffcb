"""Settings bases: `ProcessSettings` for what every process has, `BaseServiceSettings` adds the
database of a service, `AccessTokenSettings` what the users service and the gateway agree on about
access tokens. Each process subclasses them with its own env prefix (`process_config`)."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.contract import PROCESSES
from shared.networks import PRIVATE_NETWORKS, Networks

# Values that ship in this repository or are commonly pasted from examples.
# Outside development a process refuses to start with any of them.
WEAK_SECRETS = frozenset(
    {
        "",
        "secret",
        "changeme",
        "change-me",
        "password",
        "dev-internal-secret-change-me",
        "dev-jwt-secret-change-me",
    }
)
MIN_SECRET_LENGTH = 32


def _split_list(value: Any) -> Any:
    """Lists from the environment: a JSON array, or comma-separated values."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


ListSetting = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


def process_config(name: str) -> SettingsConfigDict:
    """The settings config of one process: its env prefix (`USERS_`, `GATEWAY_`, ...)."""
    return SettingsConfigDict(env_prefix=PROCESSES[name].env_prefix, extra="ignore", frozen=True)


def sqlite_url(name: str) -> str:
    """The embedded default database of a service: a SQLite file under ./var."""
    return f"sqlite+aiosqlite:///./var/{name}.db"


class ProcessSettings(BaseSettings):
    """Settings every process has. Subclasses set `env_prefix` and add their own fields."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Names of SecretStr fields that must be strong outside development.
    secret_fields: ClassVar[tuple[str, ...]] = ("internal_token_secret",)

    environment: Environment = Field(
        default=Environment.DEVELOPMENT,
        description=(
            "`development`, `test` or `production`. Outside development the process refuses to start with a "
            "default or weak secret (fewer than 32 characters); in production `/docs`, `/redoc` and "
            "`/openapi.json` are off."
        ),
    )
    host: str = Field(default="127.0.0.1", description="The address the process listens on.")
    port: int = Field(default=8000, description="The port the process listens on; each process has its own default.")
    log_level: str = Field(
        default="INFO", description="The level of the process's log (`DEBUG`, `INFO`, `WARNING`, ...)."
    )
    log_json: bool = Field(default=True, description="Log lines as JSON, each with the request id and the trace id.")
    access_log: bool = Field(default=True, description="One access line per request, carrying its trace id.")
    trace_sample_ratio: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description=(
            "Share of new traces recorded and exported (`ParentBased(TraceIdRatioBased(ratio))`). A request that "
            "arrives with a `traceparent` follows its caller's decision, so a trace is kept or dropped whole; a "
            "dropped request still has a trace id in its logs and error body."
        ),
    )

    internal_token_secret: SecretStr = Field(
        default=SecretStr("dev-internal-secret-change-me"),
        description="HS256 key of the internal identity token; the same in every process.",
    )
    internal_token_ttl_seconds: int = Field(
        default=60,
        ge=5,
        le=3600,
        description=(
            "Lifetime of an internal identity token; the same in every process (a service refuses tokens that "
            "live longer)."
        ),
    )

    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1,
        description="Larger request bodies are refused with 413 before they are read in full.",
    )
    max_header_line_bytes: int = Field(
        default=16 * 1024,
        ge=256,
        description=(
            "Bytes of one line of a request head (the request target, or one header's name and value); a longer "
            "one is refused with 431 while it arrives (`shared/serving/protocol.py`)."
        ),
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Bytes of a whole request head; a larger one is refused with 431 while it arrives.",
    )
    max_header_fields: int = Field(
        default=100,
        ge=8,
        description="Header fields of a request (trailers included); more are refused with 431 while they arrive.",
    )
    server_header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description=(
            "How long a request head may take to arrive, from its first byte (the first request's: from the "
            "connection); past it the server answers 408 and closes the connection, or closes a connection that "
            "sent nothing (as nginx's `client_header_timeout`)."
        ),
    )

    metrics_allowed_networks: ListSetting = Field(
        default_factory=lambda: list(PRIVATE_NETWORKS),
        description=(
            "Addresses or CIDRs (JSON array or comma-separated) whose connections may read `/metrics`, judged on "
            "the connection's own address; others get 404. Default: loopback and the private ranges."
        ),
    )

    # Downstream HTTP client (used by the gateway and by services that call others).
    http_transport: Literal["aiohttp", "httpx"] = Field(
        default="aiohttp",
        description=(
            "Transport of the pooled downstream client: `aiohttp` (httpx-aiohttp) or `httpx` (httpx's own). "
            "Either way the client keeps no cookies, since it calls services for every caller."
        ),
    )
    http_max_connections: int = Field(default=200, ge=1, description="Connections of the one downstream client's pool.")
    http_max_keepalive: int = Field(
        default=100, ge=0, description="Idle connections the downstream client's pool keeps open."
    )
    http_connect_timeout_seconds: float = Field(
        default=2.0, gt=0, description="How long a downstream call may take to connect."
    )
    http_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description=(
            "How long a downstream call may take before it answers 504 naming the service. Each hop's is below "
            "its caller's, so a hung service is named by the process that called it."
        ),
    )
    http_keepalive_expiry_seconds: float = Field(
        default=15.0,
        gt=0,
        description=(
            "An idle pooled connection is dropped after this long, well before any server would close it (it "
            "must be below `server_keep_alive_seconds`), so no request goes out on a connection being closed."
        ),
    )
    server_keep_alive_seconds: int = Field(
        default=30, ge=1, description="How long this process's server keeps an idle connection open."
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=256,
        description=(
            "`serve` with 1: one uvicorn process; more: a gunicorn master with that many uvicorn workers on one "
            "socket (`shared/serving/`)."
        ),
    )
    max_requests: int = Field(
        default=10_000,
        ge=0,
        description=(
            "With several workers, each is replaced after this many requests plus a random 0 to "
            "`max_requests_jitter`, so they do not all restart at once; 0 never replaces one."
        ),
    )
    max_requests_jitter: int = Field(
        default=1_000, ge=0, description="The random share added to `max_requests` for each worker."
    )
    shutdown_timeout_seconds: int = Field(
        default=10,
        ge=1,
        description="After SIGTERM: no new connections, and requests in flight get this long to finish.",
    )

    circuit_enabled: bool = Field(default=True, description="A circuit breaker per called service.")
    circuit_failure_threshold: int = Field(
        default=5,
        ge=1,
        description=(
            "Failures of a service (no answer, or a 5xx of the service's own) within `circuit_window_seconds` "
            "that open its circuit: calls then answer 503 `CIRCUIT_OPEN` at once."
        ),
    )
    circuit_window_seconds: float = Field(
        default=10.0, gt=0, description="The window in which failures are counted towards opening a circuit."
    )
    circuit_open_seconds: float = Field(
        default=5.0, gt=0, description="How long an open circuit refuses calls before trial calls go through."
    )
    circuit_half_open_calls: int = Field(
        default=1,
        ge=1,
        description=(
            "Trial calls let through at once by a half-open circuit: a success closes it, a failure opens it again."
        ),
    )
    http_connect_retries: int = Field(
        default=1,
        ge=0,
        le=3,
        description=(
            "Safe calls (GET, HEAD, OPTIONS, and writes with an Idempotency-Key) whose connection could not be "
            "made are retried this many times, within the call's remaining time. Other writes are never retried."
        ),
    )
    http_retry_jitter_seconds: float = Field(
        default=0.05, ge=0, le=1, description="The longest random pause before such a retry."
    )

    @model_validator(mode="after")
    def _client_idles_out_first(self) -> ProcessSettings:
        if self.http_keepalive_expiry_seconds >= self.server_keep_alive_seconds:
            raise ValueError("http_keepalive_expiry_seconds must be below server_keep_alive_seconds")
        return self

    @model_validator(mode="after")
    def _server_limits(self) -> ProcessSettings:
        Networks(self.metrics_allowed_networks)  # a malformed CIDR stops the start
        if not self.max_header_line_bytes <= self.max_header_bytes:
            raise ValueError("max_header_line_bytes must not exceed max_header_bytes")
        return self

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.PRODUCTION

    @property
    def docs_enabled(self) -> bool:
        return not self.is_production

    @model_validator(mode="after")
    def _refuse_weak_secrets(self) -> ProcessSettings:
        if self.environment is Environment.DEVELOPMENT:
            return self
        weak = []
        for name in self.secret_fields:
            value: Any = getattr(self, name)
            if value is None:
                continue
            raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            if raw in WEAK_SECRETS or len(raw) < MIN_SECRET_LENGTH:
                weak.append(name)
        if weak:
            raise ValueError(
                f"weak or default secret(s) {', '.join(weak)} are refused in the "
                f"{self.environment} environment: use at least {MIN_SECRET_LENGTH} random characters"
            )
        return self


class BaseServiceSettings(ProcessSettings):
    """A process with a database of its own: every service (the gateway has none)."""

    database_url: str = Field(
        default=sqlite_url("portico"),
        description=(
            "The service's database: `sqlite+aiosqlite:///./var/<service>.db` by default, "
            "`postgresql+asyncpg://...` for PostgreSQL."
        ),
    )
    db_pool_size: int = Field(default=10, ge=1, description="Connections the pool keeps open (PostgreSQL).")
    db_max_overflow: int = Field(
        default=10, ge=0, description="Connections the pool may open beyond its size under load."
    )
    # Below every caller's timeout (the orders service waits 4 s for a service, the gateway 10 s).
    db_pool_timeout_seconds: float = Field(
        default=3.0,
        gt=0,
        description=(
            "A request that waits longer for a connection answers 503 `DATABASE_UNAVAILABLE` with "
            "`Retry-After: 1` (counted in `portico_db_pool_timeouts_total`). It is below every caller's timeout, "
            "so the caller relays that 503 rather than timing out and answering 504."
        ),
    )
    db_echo: bool = Field(default=False, description="Log every SQL statement (SQLAlchemy's `echo`).")


class AccessTokenSettings(BaseSettings):
    """Access tokens as the users service signs them and the gateway verifies them (HS256 with a
    shared secret, or RS256 with the users service's private key and the gateway's public one)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    jwt_algorithm: Literal["HS256", "RS256"] = Field(
        default="HS256",
        description=(
            "How access tokens are signed: `HS256` with a secret both sides hold, or `RS256` with the users "
            "service's rotating private keys, published as a JWKS."
        ),
    )
    jwt_secret: SecretStr | None = Field(
        default=SecretStr("dev-jwt-secret-change-me"),
        description="HS256: the secret the users service signs with and the gateway verifies with; unused with RS256.",
    )
    jwt_kid: str = Field(default="portico-1", description="The `kid` of the configured signing key.")
    jwt_issuer: str = Field(default="portico", description="The `iss` of access tokens.")
