"""The identity a request is for, as the claims of the internal identity token and of access tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.errors import Forbidden, Unauthorized

# The header that carries the internal identity token from the gateway (or a service) to a service.
IDENTITY_HEADER = "X-Portico-Identity"
IDENTITY_ISSUER = "portico-internal"
IDENTITY_ALGORITHM = "HS256"
IDENTITY_CHALLENGE = 'PorticoInternal realm="portico"'
# Clock skew between processes that the checks of an internal token's `iat` and `exp` absorb.
IDENTITY_LEEWAY_SECONDS = 5
# Subjects of Portico's own services acting on their own, e.g. `service:webhooks`.
SERVICE_SUBJECT_PREFIX = "service:"
# Where the users service publishes the public keys of its access tokens (JWKS), which the gateway
# fetches and serves at the same path.
JWKS_PATH = "/.well-known/jwks.json"


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


def service_subject(name: str) -> str:
    """The subject of Portico's own service `name` acting on its own: `service:<name>`."""
    return SERVICE_SUBJECT_PREFIX + name


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
