"""The internal identity token: how the gateway (and services calling each other) tell a service who
is asking. A short-lived HS256 JWT whose audience is the one service it is meant for, so a token
captured at one service is useless at another, and a service reached around the gateway serves
nobody."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from jose import JWTError, jwt

from shared.errors import Forbidden, Unauthorized

IDENTITY_HEADER = "X-Portico-Identity"
ISSUER = "portico-internal"
ALGORITHM = "HS256"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request is for. `subject` is a user id, an API key id, or "anonymous"."""

    subject: str
    tenant_id: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    plan: str | None = None
    role: str | None = None

    @property
    def is_anonymous(self) -> bool:
        return self.subject == "anonymous"

    def require_tenant(self) -> str:
        if self.tenant_id is None:
            raise Unauthorized("This route needs an authenticated tenant.", error_code="AUTHENTICATION_REQUIRED")
        return self.tenant_id

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"Missing scope {scope}.", error_code="INSUFFICIENT_SCOPE", extra={"required_scope": scope})


ANONYMOUS = Identity(subject="anonymous")


class IdentitySigner:
    """Signs internal tokens; caches each (identity, audience) token for half its lifetime."""

    def __init__(self, secret: str, ttl_seconds: int = 60, *, max_cached: int = 10_000) -> None:
        self._secret = secret
        self._ttl = ttl_seconds
        self._cache: dict[tuple[Identity, str], tuple[float, str]] = {}
        self._max_cached = max_cached

    def sign(self, identity: Identity, audience: str) -> str:
        now = time.time()
        key = (identity, audience)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": audience,
            "sub": identity.subject,
            "iat": int(now),
            "exp": int(now) + self._ttl,
            "scope": " ".join(sorted(identity.scopes)),
        }
        if identity.tenant_id is not None:
            claims["tid"] = identity.tenant_id
        if identity.plan is not None:
            claims["plan"] = identity.plan
        if identity.role is not None:
            claims["role"] = identity.role
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        if len(self._cache) >= self._max_cached:
            self._cache.clear()
        self._cache[key] = (now + self._ttl / 2, token)
        return token


class IdentityVerifier:
    def __init__(self, secret: str, audience: str) -> None:
        self._secret = secret
        self.audience = audience

    def verify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM], audience=self.audience, issuer=ISSUER)
        except JWTError as exc:
            raise Unauthorized(
                f"Invalid internal identity: {exc}",
                error_code="INVALID_INTERNAL_IDENTITY",
                challenge='PorticoInternal realm="portico"',
            ) from exc
        return Identity(
            subject=str(claims["sub"]),
            tenant_id=claims.get("tid"),
            scopes=frozenset(str(claims.get("scope", "")).split()),
            plan=claims.get("plan"),
            role=claims.get("role"),
        )


async def require_identity(request: Request) -> Identity:
    """Dependency for every non-health route of a service."""
    cached: Identity | None = getattr(request.state, "identity", None)
    if cached is not None:
        return cached
    token = request.headers.get(IDENTITY_HEADER)
    if not token:
        raise Unauthorized(
            "Requests must come through the gateway.",
            error_code="MISSING_INTERNAL_IDENTITY",
            challenge='PorticoInternal realm="portico"',
        )
    verifier: IdentityVerifier = request.state.identity_verifier
    identity = verifier.verify(token)
    request.state.identity = identity
    return identity


async def require_tenant_identity(identity: Annotated[Identity, Depends(require_identity)]) -> Identity:
    identity.require_tenant()
    return identity


IdentityDep = Annotated[Identity, Depends(require_identity)]
TenantIdentityDep = Annotated[Identity, Depends(require_tenant_identity)]
