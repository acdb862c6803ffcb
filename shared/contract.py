"""What the gateway and the services must agree on, written once and imported by both sides.

- the processes, their modules and default ports (settings, the dev stack, tests and the Makefile),
  and the workers that run beside a service;
- the identity a request is for, as the claims of the internal identity token and of access tokens;
- scopes, what each role holds, and the plans;
- the shape of an API key;
- Idempotency-Key rules and the errors they answer with;
- the pattern of resource ids, and the line items an order and its reservation carry.

Plumbing that enforces these (token signing, the edge stages, the database) stays in the modules
that use it; only the agreement is here.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import BadRequest, Conflict, Forbidden, Unauthorized, ValidationFailed

# --------------------------------------------------------------------------- processes


@dataclass(frozen=True, slots=True)
class Process:
    name: str
    module: str  # `python -m <module>`
    port: int  # where it listens unless its settings say otherwise
    has_database: bool

    @property
    def env_prefix(self) -> str:
        return f"{self.name.upper()}_"

    @property
    def default_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# Services first, gateway last: the gateway is ready only when every service is.
PROCESSES: dict[str, Process] = {
    process.name: process
    for process in (
        Process("users", "services.users", 8001, has_database=True),
        Process("orders", "services.orders", 8002, has_database=True),
        Process("inventory", "services.inventory", 8003, has_database=True),
        Process("webhooks", "services.webhooks", 8004, has_database=True),
        Process("gateway", "gateway", 8000, has_database=False),
    )
}
# The services behind the gateway; each is also the audience of the identity tokens sent to it.
SERVICES: tuple[str, ...] = tuple(name for name in PROCESSES if name != "gateway")


@dataclass(frozen=True, slots=True)
class Worker:
    """A process beside a service, on the service's settings and database (`python -m <module>
    <command>`), serving only its probes and metrics, on the port its `port_setting` names."""

    name: str
    service: str
    command: str
    port: int
    port_setting: str

    @property
    def module(self) -> str:
        return PROCESSES[self.service].module

    @property
    def port_env(self) -> str:
        return PROCESSES[self.service].env_prefix + self.port_setting.upper()


WORKERS: dict[str, Worker] = {
    worker.name: worker for worker in (Worker("webhooks-worker", "webhooks", "worker", 8005, "worker_port"),)
}

# --------------------------------------------------------------------------- scopes, roles, plans

ALL_SCOPES: frozenset[str] = frozenset(
    {
        "users:read",
        "users:write",
        "products:read",
        "products:write",
        "orders:read",
        "orders:write",
        "webhooks:read",
        "webhooks:write",
        "usage:read",
    }
)
# Held only by Portico's own services acting on their own (the webhooks relay reads the order events).
EVENTS_READ = "events:read"
# Held only by the gateway: it adds its own events (`quota.threshold_reached`) to the orders feed.
EVENTS_WRITE = "events:write"
# The tenant's own use (`GET /v1/usage`): an admin's, never a member's.
USAGE_READ = "usage:read"

Role = Literal["admin", "member"]
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "admin": ALL_SCOPES,
    "member": frozenset({s for s in ALL_SCOPES if s.endswith(":read") and s != USAGE_READ} | {"orders:write"}),
}

Plan = Literal["free", "pro", "enterprise"]
PLANS: tuple[Plan, ...] = get_args(Plan)
# What a caller whose plan is unknown is treated as.
DEFAULT_PLAN: Plan = "free"

# --------------------------------------------------------------------------- identities

# The header that carries the internal identity token from the gateway (or a service) to a service.
IDENTITY_HEADER = "X-Portico-Identity"
IDENTITY_ISSUER = "portico-internal"
IDENTITY_ALGORITHM = "HS256"
IDENTITY_CHALLENGE = 'PorticoInternal realm="portico"'
# Clock skew between processes that the checks of an internal token's `iat` and `exp` absorb.
IDENTITY_LEEWAY_SECONDS = 5
# Subjects of Portico's own services acting on their own, e.g. `service:webhooks`.
SERVICE_SUBJECT_PREFIX = "service:"


class AuthenticationRequired(Unauthorized, code="AUTHENTICATION_REQUIRED", title="Unauthorized", slug="unauthorized"):
    """The route needs a caller and the request carried no credential (at the gateway), or no tenant
    identity (at a service)."""


class InsufficientScope(Forbidden, code="INSUFFICIENT_SCOPE", title="Forbidden", slug="forbidden"):
    """The caller lacks the route's scope: `required_scope` names it."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request is for. `subject` is a user id, `key:<API key id>`, `service:<name>` or "anonymous"."""

    subject: str
    tenant_id: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    plan: str | None = None
    role: str | None = None
    # The tenant's own monthly request quota, where an operator set one (None: the plan's).
    quota: int | None = None

    @property
    def is_anonymous(self) -> bool:
        return self.subject == "anonymous"

    @property
    def is_service(self) -> bool:
        return self.subject.startswith(SERVICE_SUBJECT_PREFIX)

    def for_tenant(self) -> TenantIdentity:
        """This identity, known to belong to a tenant (401 when it does not)."""
        if isinstance(self, TenantIdentity):
            return self
        if self.tenant_id is None:
            raise AuthenticationRequired("This route needs an authenticated tenant.")
        return TenantIdentity(self.subject, self.tenant_id, self.scopes, self.plan, self.role, self.quota)

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes:
            raise InsufficientScope(f"Missing scope {scope}.", extra={"required_scope": scope})


@dataclass(frozen=True, slots=True)
class TenantIdentity(Identity):
    """An identity that belongs to a tenant: what a service's authorization dependencies answer."""

    tenant_id: str


ANONYMOUS = Identity(subject="anonymous")


def identity_claims(identity: Identity) -> dict[str, Any]:
    """The claims that say who a token is for; access tokens and internal identity tokens share them."""
    claims: dict[str, Any] = {"sub": identity.subject, "scope": " ".join(sorted(identity.scopes))}
    if identity.tenant_id is not None:
        claims["tid"] = identity.tenant_id
    if identity.plan is not None:
        claims["plan"] = identity.plan
    if identity.role is not None:
        claims["role"] = identity.role
    if identity.quota is not None:
        claims["quota"] = identity.quota
    return claims


def identity_from_claims(claims: dict[str, Any]) -> Identity:
    return Identity(
        subject=str(claims["sub"]),
        tenant_id=claims.get("tid"),
        scopes=frozenset(str(claims.get("scope", "")).split()),
        plan=claims.get("plan"),
        role=claims.get("role"),
        quota=_quota_claim(claims.get("quota")),
    )


def _quota_claim(value: Any) -> int | None:
    # Only a positive whole number is a quota; anything else leaves the plan's.
    return value if type(value) is int and value > 0 else None


# --------------------------------------------------------------------------- API keys

# A key is `sk_` and 32 random bytes in base64url (43 characters without padding). Only its SHA-256
# is ever stored or sent between processes.
API_KEY_PREFIX = "sk_"
API_KEY_BYTES = 32
API_KEY_RE = re.compile(r"^sk_[A-Za-z0-9_-]{43}$")
KEY_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
# The subject of an identity that came from an API key: `key:<key id>`.
KEY_SUBJECT_PREFIX = "key:"


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(API_KEY_BYTES)


def is_well_formed(raw: str) -> bool:
    return API_KEY_RE.match(raw) is not None


def hash_api_key(raw: str) -> str:
    """Hex SHA-256: a key has 256 bits of entropy, so a fast unsalted hash is enough (no dictionary
    of likely keys exists to attack it with), and it lets the key be looked up by its hash."""
    return hashlib.sha256(raw.encode("ascii")).hexdigest()


def key_subject(key_id: str) -> str:
    return KEY_SUBJECT_PREFIX + key_id


def key_id_of(subject: str) -> str | None:
    """The API key id of a key's subject; None for a user's subject."""
    return subject.removeprefix(KEY_SUBJECT_PREFIX) if subject.startswith(KEY_SUBJECT_PREFIX) else None


# --------------------------------------------------------------------------- idempotency

# A key is its caller's own: the gateway and any service that deduplicates on it scope it to the tenant
# and the caller (the identity's subject: a user, an API key), so no other caller of the tenant is
# ever handed an answer given to someone else. The errors below are what every side answers.
IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENT_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Visible ASCII, as a Structured Fields string can carry it; long enough for any UUID or ULID.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
_KEY_FIELD = {"loc": ["header", "idempotency-key"], "field": "idempotency-key"}


class InvalidIdempotencyKey(BadRequest, code="INVALID_IDEMPOTENCY_KEY", title="Invalid Idempotency-Key"):
    """An `Idempotency-Key` that is empty, longer than 255 characters or not visible ASCII."""

    def __init__(self) -> None:
        super().__init__(
            "Idempotency-Key must be 1 to 255 visible ASCII characters.", errors=[{**_KEY_FIELD, "msg": "invalid"}]
        )


_KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN)


def checked_idempotency_key(raw: str | None) -> str | None:
    """The key a request sent, if any; 400 INVALID_IDEMPOTENCY_KEY for one that breaks the rules."""
    if raw is not None and _KEY_RE.match(raw) is None:
        raise InvalidIdempotencyKey()
    return raw


class IdempotencyKeyInUse(Conflict, code="IDEMPOTENCY_KEY_IN_USE", title="Idempotency-Key in use"):
    """The first request with this `Idempotency-Key` is still running: `Retry-After: 1`."""

    def __init__(self) -> None:
        super().__init__(
            "A request with this Idempotency-Key is still being processed; retry shortly.",
            headers={"Retry-After": "1"},
        )


class IdempotencyKeyReused(ValidationFailed, code="IDEMPOTENCY_KEY_REUSED", title="Idempotency-Key reused"):
    """The `Idempotency-Key` was used by this caller for a different request (method, path, query or
    body)."""

    def __init__(self) -> None:
        super().__init__(
            "This Idempotency-Key was used for a different request; use a new key for a new request.",
            errors=[{**_KEY_FIELD, "msg": "reused"}],
        )


class IdempotentResponseNotStored(Conflict, code="IDEMPOTENT_RESPONSE_NOT_STORED", title="Request already done"):
    """A repeat of a keyed request whose answer was not kept (it held a secret, or was too large)."""


# --------------------------------------------------------------------------- resources

# Ids in paths and queries: the UUIDs the services hand out fit, and nothing longer than an id column,
# nor a dot or slash that could change a forwarded path, gets through.
RESOURCE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
ResourceIdField = Annotated[str, Field(pattern=RESOURCE_ID_PATTERN)]
ResourceIdPath = Annotated[str, Path(pattern=RESOURCE_ID_PATTERN)]

# The lines of an order, as the orders service takes them and passes them on to reserve stock.
MAX_QUANTITY = 10_000
MAX_ITEMS = 100


class LineItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_id: ResourceIdField
    # Strict: "2", 2.0 and true are refused rather than quietly converted.
    quantity: int = Field(strict=True, ge=1, le=MAX_QUANTITY)


LineItems = Annotated[list[LineItem], Field(min_length=1, max_length=MAX_ITEMS)]

# A user's credit limit: what their open (not cancelled) orders may add up to. Far inside a 64-bit sum.
MAX_CREDIT_LIMIT_CENTS = 10**15


class CreditLimitExceeded(ValidationFailed, code="CREDIT_LIMIT_EXCEEDED", title="Credit limit exceeded"):
    """The user's open orders and this one would pass their credit limit: `credit_limit_cents`,
    `open_cents` and `total_cents` in the body."""


class ReservedLine(BaseModel):
    """A line as the inventory service reserved it, with the product's sku, name and the price it read
    while taking the stock; the orders service keeps these in the order."""

    model_config = ConfigDict(from_attributes=True)

    product_id: str
    sku: str
    name: str
    quantity: int
    unit_price_cents: int


# --------------------------------------------------------------------------- answers that hold secrets

# What a service sends with an answer that holds a secret (a token, a new API key, a webhook secret);
# the gateway's routes of those answers say `secret` too (`gateway/routes/forward.py`).
NO_STORE = "no-store"
