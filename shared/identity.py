"""The internal identity token: how the gateway (and services calling each other) tell a service who
is asking. A short-lived HS256 JWT whose audience is the one service it is meant for, so a token
captured at one service is useless at another, and a service reached around the gateway serves
nobody."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Depends, Request
from jose import JWTError, jwt

from shared.contract import (
    IDENTITY_ALGORITHM,
    IDENTITY_CHALLENGE,
    IDENTITY_HEADER,
    IDENTITY_ISSUER,
    Identity,
    TenantIdentity,
    identity_claims,
    identity_from_claims,
)
from shared.errors import Unauthorized
from shared.state import ServiceState, app_state


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
            **identity_claims(identity),
            "iss": IDENTITY_ISSUER,
            "aud": audience,
            "iat": int(now),
            "exp": int(now) + self._ttl,
        }
        token = jwt.encode(claims, self._secret, algorithm=IDENTITY_ALGORITHM)
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
            claims = jwt.decode(
                token, self._secret, algorithms=[IDENTITY_ALGORITHM], audience=self.audience, issuer=IDENTITY_ISSUER
            )
        except JWTError as exc:
            raise Unauthorized(
                f"Invalid internal identity: {exc}",
                error_code="INVALID_INTERNAL_IDENTITY",
                challenge=IDENTITY_CHALLENGE,
            ) from exc
        return identity_from_claims(claims)


async def require_identity(request: Request) -> Identity:
    """Dependency of every non-health route of a service: the identity the internal token names.
    FastAPI resolves it once per request, however many dependencies ask for it."""
    token = request.headers.get(IDENTITY_HEADER)
    if not token:
        raise Unauthorized(
            "Requests must come through the gateway.",
            error_code="MISSING_INTERNAL_IDENTITY",
            challenge=IDENTITY_CHALLENGE,
        )
    state: ServiceState[Any, Any] = app_state(request)
    return state.identity_verifier.verify(token)


IdentityDep = Annotated[Identity, Depends(require_identity)]


async def require_tenant_identity(identity: IdentityDep) -> TenantIdentity:
    return identity.for_tenant()


TenantIdentityDep = Annotated[TenantIdentity, Depends(require_tenant_identity)]


class Authorize:
    """Route dependency of a service: the caller must belong to a tenant (401) and hold `scope` (403).

    Each service names its own in its `deps.py`, so handlers hold only the domain call:
    `OrdersWrite = Annotated[TenantIdentity, Depends(Authorize("orders:write"))]`.
    """

    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(self, identity: TenantIdentityDep) -> TenantIdentity:
        identity.require_scope(self.scope)
        return identity
