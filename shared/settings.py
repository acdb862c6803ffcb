"""Settings bases: `ProcessSettings` for what every process has, `BaseServiceSettings` adds the
database of a service, `AccessTokenSettings` what the users service and the gateway agree on about
access tokens. Each process subclasses them with its own env prefix (`process_config`)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PlainSerializer,
    PositiveFloat,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.contract import PROCESSES
from shared.networks import PRIVATE_NETWORKS, Networks

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

D = TypeVar("D", bound="DataclassInstance")

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
# A whole number of at least 1: counts, sizes and whole seconds that cannot be 0 (said `>= 1` in the
# schema and the settings reference, where pydantic's PositiveInt would say `> 0`).
AtLeastOne = Annotated[int, Field(ge=1)]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One instance of a service: the base URL requests go to, and its `host:port` (the `instance`
    label of the upstream metrics, and the client span's `server.address` and `server.port`)."""

    base_url: str
    host: str
    port: int

    @property
    def label(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def endpoint(scheme: str, host: str, port: int, path: str = "") -> Endpoint:
    literal = f"[{host}]" if ":" in host else host
    return Endpoint(f"{scheme}://{literal}:{port}{path}", host, port)


@dataclass(frozen=True, slots=True)
class ServiceAddress:
    """Where a called service is (a `<SERVICE>_URL` setting): one URL, a comma-separated list of
    instance URLs (a fleet), or `dns+http://name:port` (`dns+https://`), meaning every A and AAAA
    record of `name`, resolved again on the records' TTL (`shared/fleet.py`)."""

    # The instances of a fixed list (one for a single URL); empty for a DNS name.
    endpoints: tuple[Endpoint, ...] = ()
    # A DNS name: the scheme, name, port and path prefix each of its addresses is called with.
    scheme: str = "http"
    dns_name: str | None = None
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.dns_name is None:
            return ",".join(e.base_url for e in self.endpoints)
        return f"dns+{self.scheme}://{self.dns_name}:{self.port}{self.path}"

    def endpoint_at(self, address: str) -> Endpoint:
        """The instance at one of the DNS name's addresses."""
        return endpoint(self.scheme, address, self.port, self.path)


def _url_parts(text: str) -> tuple[str, str, int, str]:
    """scheme, host, port and path of one http(s) URL; ValueError saying what is wrong."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        # They would reach logs, metrics and spans with the URL.
        raise ValueError(f"a service URL carries no credentials ({parts.hostname})")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r}: a service URL has no query or fragment")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), parts.path.rstrip("/")


def parse_service_address(value: Any) -> Any:
    """`ServiceAddress` from a setting's text (other values are left to pydantic)."""
    if isinstance(value, ServiceAddress) or not isinstance(value, str):
        return value
    items = [item.strip() for item in value.split(",")]
    if not value.strip() or any(not item for item in items):
        raise ValueError(f"{value!r} has an empty entry: give one URL, or URLs separated by single commas")
    if any(item.startswith("dns+") for item in items):
        if len(items) > 1:
            raise ValueError("a dns+http:// name stands alone: it is not part of a list")
        scheme, host, port, path = _url_parts(items[0][len("dns+") :])
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return ServiceAddress(scheme=scheme, dns_name=host.lower(), port=port, path=path)
        raise ValueError(f"{items[0]!r} names an address, not a DNS name: write it as {scheme}://")
    endpoints = tuple(endpoint(*_url_parts(item)) for item in items)
    labels = [e.label for e in endpoints]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{value!r} lists an instance twice")
    return ServiceAddress(endpoints)


def service_address(url: str) -> ServiceAddress:
    address: ServiceAddress = parse_service_address(url)
    return address


def name_server(text: str) -> tuple[str, int]:
    """`address`, `address:port` or `[v6]:port` of a DNS server, as (address, port)."""
    address, port = text, 53
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else -1 if rest else 53
    elif text.count(":") == 1:
        address, _, digits = text.partition(":")
        port = int(digits) if digits.isdigit() else -1
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{text!r} is not a name server address (address or address:port)") from None
    if not 0 < port < 65536:
        raise ValueError(f"{text!r} has no valid port")
    return address, port


# A service's address in settings: see `ServiceAddress`.
ServiceAddressSetting = Annotated[
    ServiceAddress, NoDecode, BeforeValidator(parse_service_address), PlainSerializer(str, return_type=str)
]


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


def process_config(name: str) -> SettingsConfigDict:
    """The settings config of one process: its env prefix (`USERS_`, `GATEWAY_`, ...)."""
    return SettingsConfigDict(env_prefix=PROCESSES[name].env_prefix, extra="ignore", frozen=True)


def settings_group(cls: type[D], settings: BaseSettings, prefix: str, **given: Any) -> D:
    """A `cls` (a dataclass) made of the settings that its fields name after `prefix`: a field `queue_size`
    with the prefix `admission_` is `settings.admission_queue_size`. Fields in `given` take those values
    instead."""
    read = {
        field.name: getattr(settings, prefix + field.name)
        for field in dataclasses.fields(cls)
        if field.init and field.name not in given
    }
    return cls(**read, **given)


def sqlite_url(name: str) -> str:
    """The embedded default database of a service: a SQLite file under ./var."""
    return f"sqlite+aiosqlite:///./var/{name}.db"


# Settings that several processes declare alike but for a service's name, e.g.
# `port: int = service_port("users")`: their description is built from the name.
def service_port(name: str) -> Any:
    """The `port` setting of a service, its own default."""
    return Field(default=PROCESSES[name].port, description=f"The port the {name} service listens on.")


def service_database(name: str) -> Any:
    """The `database_url` setting of a service, a SQLite file of its own by default."""
    return Field(
        default=sqlite_url(name),
        description=(
            f"The {name} database: a SQLite file under ./var by default, `postgresql+asyncpg://...` for PostgreSQL."
        ),
    )


def service_url(name: str) -> Any:
    """The `<name>_url` setting of a process that calls the `name` service (a `ServiceAddressSetting`)."""
    return Field(
        default=service_address(PROCESSES[name].default_url),
        description=(
            f"Where the {name} service is: one URL, a comma-separated list of its instances' URLs, or "
            "`dns+http://name:port` for every address of a DNS name (a Kubernetes headless Service)."
        ),
    )


# Every settings class: a field's description is the docstring right below it.
_SETTINGS_CONFIG = SettingsConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)


class ProcessSettings(BaseSettings):
    """Settings every process has. Subclasses set `env_prefix` and add their own fields."""

    model_config = _SETTINGS_CONFIG

    # Names of SecretStr fields that must be strong outside development.
    secret_fields: ClassVar[tuple[str, ...]] = ("internal_token_secret",)

    environment: Environment = Environment.DEVELOPMENT
    """`development`, `test` or `production`. Outside development the process refuses to start with a default or weak
    secret (fewer than 32 characters); in production `/docs`, `/redoc` and `/openapi.json` are off."""
    host: str = "127.0.0.1"
    """The address the process listens on."""
    port: int = 8000
    """The port the process listens on; each process has its own default."""
    log_level: str = "INFO"
    """The level of the process's log (`DEBUG`, `INFO`, `WARNING`, ...)."""
    log_json: bool = True
    """Log lines as JSON, each with the request id and the trace id."""
    access_log: bool = True
    """One access line per request, carrying its trace id."""
    trace_sample_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    """Share of new traces recorded and exported (`ParentBased(TraceIdRatioBased(ratio))`). A request that arrives with
    a `traceparent` follows its caller's decision, so a trace is kept or dropped whole; a dropped request still has a
    trace id in its logs and error body."""

    internal_token_secret: SecretStr = SecretStr("dev-internal-secret-change-me")
    """HS256 key of the internal identity token; the same in every process."""
    internal_token_ttl_seconds: Annotated[int, Field(ge=5, le=3600)] = 60
    """Lifetime of an internal identity token; the same in every process (a service refuses tokens that live longer)."""

    max_body_bytes: AtLeastOne = 1024 * 1024
    """Larger request bodies are refused with 413 before they are read in full."""
    max_header_line_bytes: Annotated[int, Field(ge=256)] = 16 * 1024
    """Bytes of one line of a request head (the request target, or one header's name and value); a longer one is refused
    with 431 while it arrives (`shared/serving/protocol.py`)."""
    max_header_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024
    """Bytes of a whole request head; a larger one is refused with 431 while it arrives."""
    max_header_fields: Annotated[int, Field(ge=8)] = 100
    """Header fields of a request (trailers included); more are refused with 431 while they arrive."""
    server_header_timeout_seconds: PositiveFloat = 10.0
    """How long a request head may take to arrive, from its first byte (the first request's: from the connection); past
    it the server answers 408 and closes the connection, or closes a connection that sent nothing (as nginx's
    `client_header_timeout`)."""

    metrics_allowed_networks: ListSetting = Field(default_factory=lambda: list(PRIVATE_NETWORKS))
    """Addresses or CIDRs (JSON array or comma-separated) whose connections may read `/metrics`, judged on the
    connection's own address; others get 404. Default: loopback and the private ranges."""

    # Upstream HTTP client (used by the gateway and by services that call others).
    http_transport: Literal["aiohttp", "httpx"] = "aiohttp"
    """Transport of the pooled upstream client: `aiohttp` (httpx-aiohttp) or `httpx` (httpx's own). Either way the
    client keeps no cookies, since it calls services for every caller."""
    http_max_connections: AtLeastOne = 200
    """Connections of the one upstream client's pool."""
    http_max_keepalive: NonNegativeInt = 100
    """Idle connections the upstream client's pool keeps open."""
    http_connect_timeout_seconds: PositiveFloat = 2.0
    """How long an upstream call may take to connect."""
    http_timeout_seconds: PositiveFloat = 10.0
    """How long an upstream call may take before it answers 504 naming the service. Each hop's is below its caller's, so
    a hung service is named by the process that called it."""
    http_keepalive_expiry_seconds: PositiveFloat = 15.0
    """An idle pooled connection is dropped after this long, well before any server would close it (it must be below
    `server_keep_alive_seconds`), so no request goes out on a connection being closed."""
    server_keep_alive_seconds: AtLeastOne = 30
    """How long this process's server keeps an idle connection open."""
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    """`serve` with 1: one uvicorn process; more: a gunicorn master with that many uvicorn workers on one socket
    (`shared/serving/`)."""
    max_requests: NonNegativeInt = 10_000
    """With several workers, each is replaced after this many requests plus a random 0 to `max_requests_jitter`, so they
    do not all restart at once; 0 never replaces one."""
    max_requests_jitter: NonNegativeInt = 1_000
    """The random share added to `max_requests` for each worker."""
    shutdown_timeout_seconds: AtLeastOne = 10
    """After SIGTERM: no new connections, and requests in flight get this long to finish."""

    circuit_enabled: bool = True
    """A circuit breaker per called service."""
    circuit_failure_threshold: AtLeastOne = 5
    """Failures of a service (no answer, or a 5xx of the service's own) within `circuit_window_seconds` that open its
    circuit: calls then answer 503 `CIRCUIT_OPEN` at once."""
    circuit_window_seconds: PositiveFloat = 10.0
    """The window in which failures are counted towards opening a circuit."""
    circuit_open_seconds: PositiveFloat = 5.0
    """How long an open circuit refuses calls before trial calls go through."""
    circuit_half_open_calls: AtLeastOne = 1
    """Trial calls let through at once by a half-open circuit: a success closes it, a failure opens it again."""
    http_connect_retries: Annotated[int, Field(ge=0, le=3)] = 1
    """Calls that got no answer are retried this many times, within the call's remaining time: GET, HEAD and OPTIONS
    short of a timeout (a refused connect, a reset, an answer cut off), writes with an Idempotency-Key only when their
    connection could not be made. Other writes are never retried."""
    http_retry_jitter_seconds: Annotated[float, Field(ge=0, le=1)] = 0.05
    """The longest random pause before such a retry."""

    # Fleets: a service's URL setting may name several instances (`shared/fleet.py`).
    upstream_dns_min_ttl_seconds: PositiveFloat = 1.0
    """A `dns+http://` name is resolved again after its records' TTL, but never sooner than this."""
    upstream_dns_max_ttl_seconds: PositiveFloat = 30.0
    """A `dns+http://` name is resolved again at least this often, whatever its records' TTL, so instances added or
    removed are seen within it."""
    upstream_dns_servers: ListSetting = Field(default_factory=list)
    """Name servers (`address` or `address:port`) that resolve `dns+http://` names; empty: the system's
    (`/etc/resolv.conf`, with its search domains)."""
    upstream_balancer: Literal["least_request", "peak_ewma"] = "least_request"
    """How a request picks one of a service's healthy instances: the less loaded of two drawn at random, by requests in
    flight (`least_request`) or by in-flight requests times recent latency (`peak_ewma`)."""
    upstream_ejection_failures: AtLeastOne = 5
    """Consecutive failures of one instance (refused, reset, timed out, or a 5xx of its own) that take it out of its
    fleet until a check of its `/health/ready` passes. At most half of a fleet is out at once."""
    upstream_ejection_seconds: PositiveFloat = 1.0
    """How long an instance stays out before its first check; doubled each time it is taken out again within
    `upstream_ejection_max_seconds` of coming back."""
    upstream_ejection_max_seconds: PositiveFloat = 30.0
    """The longest an instance stays out before it is checked."""
    upstream_stall_seconds: NonNegativeFloat = 3.0
    """An instance with requests in flight that has answered none for this long, while the rest of its fleet answers, is
    taken out too (a hung process accepts connections and never answers); its requests in flight go on. 0: never."""
    upstream_health_check_interval_seconds: PositiveFloat = 1.0
    """How often an instance that is out, past its wait, is checked."""
    upstream_health_check_timeout_seconds: PositiveFloat = 1.0
    """How long a check of `/health/ready` may take."""
    upstream_retry_budget_ratio: Annotated[float, Field(ge=0, le=1)] = 0.2
    """Retries to one service stay within this share of its requests over `upstream_retry_budget_window_seconds` (plus
    `upstream_retry_budget_min_retries`), so retries cannot multiply an outage."""
    upstream_retry_budget_min_retries: NonNegativeInt = 10
    """Retries allowed in any window whatever the number of requests."""
    upstream_retry_budget_window_seconds: Annotated[float, Field(ge=1, le=600)] = 10.0
    """The sliding window of the retry budget."""

    # Admission control: an adaptive limit of requests in progress (`shared/admission.py`).
    admission_enabled: bool = True
    """Admission control: at most an adaptive number of requests in progress, the rest answered 503 `OVERLOADED` with
    `Retry-After` at once, by the server from the request's head (probes and `/metrics` never). Off: every request is
    admitted (deadlines are still honoured)."""
    admission_initial_limit: AtLeastOne = 200
    """The limit of requests in progress the process starts with, and goes back to once an overload that lowered it is
    over (the process has not used half its limit for 5 s)."""
    admission_min_limit: AtLeastOne = 20
    """The limit never falls below this, however slow requests get (a burst of this many is always admitted)."""
    admission_max_limit: AtLeastOne = 1000
    """The limit never grows above this, however fast requests are."""
    admission_rtt_tolerance: Annotated[float, Field(ge=1.0)] = 3.0
    """How much slower than its usual (long-term) latency the process may answer before the limit shrinks: the gradient
    is `tolerance * long RTT / short RTT`, at most 1. A process whose requests share one event loop answers more slowly
    as soon as its CPU is busy, long before it is overloaded: measured, 1.5 shed at capacity and recovered slowly."""
    admission_smoothing: Annotated[float, Field(gt=0, le=1)] = 0.2
    """How far the limit moves towards each window's new estimate (1: all the way at once)."""
    admission_window_seconds: Annotated[float, Field(gt=0, le=10)] = 0.1
    """The limit is recomputed once per window, from the median time of the requests finished in it."""
    admission_queue_size: NonNegativeInt = 0
    """Requests past the limit that may wait for a slot (a freed slot goes to the best plan waiting); 0: none wait, a
    request past the limit is refused at once. None by default: a request that may wait is decided by the app rather
    than the server, and under sustained overload a queue only adds to the latency of the admitted (docs: Overload)."""
    admission_queue_timeout_seconds: Annotated[float, Field(ge=0, le=5)] = 0.5
    """The longest a request waits in the queue before it is answered 503 `OVERLOADED`."""
    admission_retry_after_seconds: AtLeastOne = 1
    """`Retry-After` of a 503 `OVERLOADED`."""

    @model_validator(mode="after")
    def _client_idles_out_first(self) -> ProcessSettings:
        if self.http_keepalive_expiry_seconds >= self.server_keep_alive_seconds:
            raise ValueError("http_keepalive_expiry_seconds must be below server_keep_alive_seconds")
        return self

    @field_validator("*", mode="before")
    @classmethod
    def _service_address(cls, value: Any, info: ValidationInfo) -> Any:
        """A service's address that does not parse stops the start, naming the environment variable."""
        field = cls.model_fields.get(info.field_name or "")
        if field is None or field.annotation is not ServiceAddress:
            return value
        try:
            return parse_service_address(value)
        except ValueError as exc:
            variable = f"{cls.model_config.get('env_prefix', '')}{(info.field_name or '').upper()}"
            raise ValueError(f"{variable}: {exc}") from None

    @model_validator(mode="after")
    def _fleets(self) -> ProcessSettings:
        if self.upstream_dns_min_ttl_seconds > self.upstream_dns_max_ttl_seconds:
            raise ValueError("upstream_dns_min_ttl_seconds must not exceed upstream_dns_max_ttl_seconds")
        if self.upstream_ejection_seconds > self.upstream_ejection_max_seconds:
            raise ValueError("upstream_ejection_seconds must not exceed upstream_ejection_max_seconds")
        for server in self.upstream_dns_servers:
            name_server(server)  # a malformed address stops the start
        return self

    @model_validator(mode="after")
    def _admission_limits(self) -> ProcessSettings:
        if not self.admission_min_limit <= self.admission_initial_limit <= self.admission_max_limit:
            raise ValueError("admission limits must hold admission_min_limit <= initial <= admission_max_limit")
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
    """The service's database: `sqlite+aiosqlite:///./var/<service>.db` by default, `postgresql+asyncpg://...` for
    PostgreSQL."""
    db_pool_size: AtLeastOne = 10
    """Connections the pool keeps open (PostgreSQL)."""
    db_max_overflow: NonNegativeInt = 10
    """Connections the pool may open beyond its size under load."""
    # Below every caller's timeout (the orders service waits 4 s for a service, the gateway 10 s).
    db_pool_timeout_seconds: PositiveFloat = 3.0
    """A request that waits longer for a connection answers 503 `DATABASE_UNAVAILABLE` with `Retry-After: 1` (counted in
    `portico_db_pool_timeouts_total`). It is below every caller's timeout, so the caller relays that 503 rather than
    timing out and answering 504."""
    db_echo: bool = False
    """Log every SQL statement (SQLAlchemy's `echo`)."""


class AccessTokenSettings(BaseSettings):
    """Access tokens as the users service signs them and the gateway verifies them (HS256 with a
    shared secret, or RS256 with the users service's private key and the gateway's public one)."""

    model_config = _SETTINGS_CONFIG

    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    """How access tokens are signed: `HS256` with a secret both sides hold, or `RS256` with the users service's rotating
    private keys, published as a JWKS."""
    jwt_secret: SecretStr | None = SecretStr("dev-jwt-secret-change-me")
    """HS256: the secret the users service signs with and the gateway verifies with; unused with RS256."""
    jwt_kid: str = "portico-1"
    """The `kid` of the configured signing key."""
    jwt_issuer: str = "portico"
    """The `iss` of access tokens."""
