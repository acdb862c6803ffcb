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

    environment: Environment = Environment.DEVELOPMENT
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    log_json: bool = True
    access_log: bool = True
    # New traces kept (recorded and exported); a request that continues a trace follows its caller.
    trace_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)

    internal_token_secret: SecretStr = SecretStr("dev-internal-secret-change-me")
    internal_token_ttl_seconds: int = Field(default=60, ge=5, le=3600)

    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    # The request head (request line and header fields): larger ones are refused with 431 while they
    # arrive (shared/serving/protocol.py).
    max_header_line_bytes: int = Field(default=16 * 1024, ge=256)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    max_header_fields: int = Field(default=100, ge=8)
    # From a request's first byte (the first request's: from the connection) until its head is
    # complete; beyond it 408 and the connection closed, as nginx's client_header_timeout.
    server_header_timeout_seconds: float = Field(default=10.0, gt=0)

    # Peers that may read /metrics (addresses or CIDRs), judged on the connection's own address.
    metrics_allowed_networks: ListSetting = Field(default_factory=lambda: list(PRIVATE_NETWORKS))

    # Downstream HTTP client (used by the gateway and by services that call others).
    http_transport: Literal["aiohttp", "httpx"] = "aiohttp"
    http_max_connections: int = Field(default=200, ge=1)
    http_max_keepalive: int = Field(default=100, ge=0)
    http_connect_timeout_seconds: float = Field(default=2.0, gt=0)
    http_timeout_seconds: float = Field(default=10.0, gt=0)
    # An idle pooled connection is dropped by the client well before the server would close it, so
    # a request never goes out on a connection the server is closing at that moment.
    http_keepalive_expiry_seconds: float = Field(default=15.0, gt=0)
    # How long this process's server keeps an idle connection open (uvicorn's default is 5 s).
    server_keep_alive_seconds: int = Field(default=30, ge=1)
    # Serving (`python -m <process> serve`, `shared/serving/`): 1 is one uvicorn process; more is a
    # gunicorn master with that many uvicorn workers on one socket.
    workers: int = Field(default=1, ge=1, le=256)
    # With several workers, each is replaced after this many requests plus a random 0 to
    # `max_requests_jitter` (so they do not all restart at once); 0 never replaces one.
    max_requests: int = Field(default=10_000, ge=0)
    max_requests_jitter: int = Field(default=1_000, ge=0)
    # After SIGTERM: no new connections, requests in flight get this long to finish.
    shutdown_timeout_seconds: int = Field(default=10, ge=1)

    # A circuit breaker per called service: `circuit_failure_threshold` failures (no answer, or a 5xx
    # of the service's own) within `circuit_window_seconds` open it; calls then answer 503
    # CIRCUIT_OPEN at once for `circuit_open_seconds`, after which `circuit_half_open_calls` trial
    # calls go through: a success closes it, a failure opens it again.
    circuit_enabled: bool = True
    circuit_failure_threshold: int = Field(default=5, ge=1)
    circuit_window_seconds: float = Field(default=10.0, gt=0)
    circuit_open_seconds: float = Field(default=5.0, gt=0)
    circuit_half_open_calls: int = Field(default=1, ge=1)
    # Safe calls (GET, HEAD, OPTIONS, and writes with an Idempotency-Key) are retried this many times
    # when the connection could not be made, after a random pause of up to `http_retry_jitter_seconds`,
    # and only within the call's remaining time. Other writes are never retried.
    http_connect_retries: int = Field(default=1, ge=0, le=3)
    http_retry_jitter_seconds: float = Field(default=0.05, ge=0, le=1)

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

    database_url: str = sqlite_url("portico")
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    # Below every caller's timeout (the orders service waits 4 s for a service, the gateway 10 s): a
    # request that cannot get a connection answers 503 with Retry-After before its caller gives up and
    # answers 504 in its place.
    db_pool_timeout_seconds: float = Field(default=3.0, gt=0)
    db_echo: bool = False


class AccessTokenSettings(BaseSettings):
    """Access tokens as the users service signs them and the gateway verifies them (HS256 with a
    shared secret, or RS256 with the users service's private key and the gateway's public one)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    # HS256: the secret both sides hold; unused with RS256.
    jwt_secret: SecretStr | None = SecretStr("dev-jwt-secret-change-me")
    jwt_kid: str = "portico-1"
    jwt_issuer: str = "portico"
