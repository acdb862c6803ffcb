"""The internal identity token: how the gateway (and services calling each other) tell a service who
is asking. A short-lived HS256 JWT whose audience is the one service it is meant for, so a token
captured at one service is useless at another, and a service reached around the gateway serves
nobody."""

from __future__ import annotations

import logging
import time
from typing import Any

from jose import JWTError, jwt

from shared.contract import (
    IDENTITY_ALGORITHM,
    IDENTITY_CHALLENGE,
    IDENTITY_ISSUER,
    IDENTITY_LEEWAY_SECONDS,
    Identity,
    identity_claims,
    identity_from_claims,
)
from shared.errors import Unauthorized

logger = logging.getLogger("portico.identity")


class InvalidInternalIdentity(
    Unauthorized, code="INVALID_INTERNAL_IDENTITY", title="Unauthorized", slug="unauthorized"
):
    """A service got an internal identity token that does not verify (signature, audience, issuer,
    lifetime or dates); the same answer whatever the reason, which goes to the service's log only."""


class MissingInternalIdentity(
    Unauthorized, code="MISSING_INTERNAL_IDENTITY", title="Unauthorized", slug="unauthorized"
):
    """A request reached a service without an internal identity token: around the gateway."""


# python-jose checks a claim only when it is present (a token without `aud` passes any audience
# check), so every claim the checks rely on is required.
_DECODE_OPTIONS: dict[str, Any] = {
    "require_iss": True,
    "require_aud": True,
    "require_sub": True,
    "require_iat": True,
    "require_exp": True,
    "leeway": IDENTITY_LEEWAY_SECONDS,
}


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


class InvalidIdentity(Exception):
    """Why a token was refused: logged, never sent to the caller."""


class IdentityVerifier:
    """Checks internal tokens for one service (the audience). A token must carry `iss`, `aud`, `sub`,
    `iat` and `exp`, and live no longer than `ttl_seconds` (the lifetime every process signs with),
    so a token minted with a long life, or dated in the future, is refused even with the right key."""

    def __init__(self, secret: str, audience: str, ttl_seconds: int) -> None:
        self._secret = secret
        self.audience = audience
        self.max_lifetime = ttl_seconds + IDENTITY_LEEWAY_SECONDS

    def verify(self, token: str) -> Identity:
        try:
            claims = self._claims(token)
        except (JWTError, InvalidIdentity) as exc:
            # The library's words describe the token's flaw to whoever forged it: logged only.
            logger.info("refused an internal identity token: %s", exc)
            raise InvalidInternalIdentity(
                "The internal identity token is invalid.", challenge=IDENTITY_CHALLENGE
            ) from None
        return identity_from_claims(claims)

    def _claims(self, token: str) -> dict[str, Any]:
        claims = jwt.decode(
            token,
            self._secret,
            algorithms=[IDENTITY_ALGORITHM],
            audience=self.audience,
            issuer=IDENTITY_ISSUER,
            options=_DECODE_OPTIONS,
        )
        # jose has checked that both are integers.
        issued, expires = int(claims["iat"]), int(claims["exp"])
        if expires - issued > self.max_lifetime:
            raise InvalidIdentity(f"lifetime {expires - issued} s exceeds {self.max_lifetime} s")
        if issued > time.time() + IDENTITY_LEEWAY_SECONDS:
            raise InvalidIdentity("issued in the future")
        return claims
