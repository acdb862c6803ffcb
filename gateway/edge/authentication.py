"""Authentication: who is calling. One `Authenticator` for every way in: HTTP requests (the edge,
`gateway/edge/pipeline.py`), WebSocket connections and the event streams that outlive a request.

Credentials are `Authorization: Bearer <JWT>` (issued by the users service, verified here against a
cache of tokens verified already), or `X-API-Key: sk_...` (resolved through the users service by
`ApiKeyResolver`, remembered briefly); a WebSocket sends either one as `?token=`. Sending both
headers is 400. No credentials at all is the anonymous caller: a route that needs one refuses it (401,
`gateway/routes/forward.py` `Access`). An `X-Tenant-Id` that disagrees with the credentials' tenant is
403.

Every failed authentication counts against the client address's own limit (`AuthFailures`,
`gateway/edge/authfailures.py`), which is checked before any upstream call made to authenticate.
Routes for callers without credentials (sign-up, login) never look at credentials: the caller is its
client address, for the failure limit and the rate limits, so a token of one's own tenant lifts no
limit there.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass
from typing import Any

import orjson
from jose import ExpiredSignatureError, JWTError, jwt
from starlette.types import Scope

from gateway.edge.addresses import ClientAddress
from gateway.edge.apikeys import ApiKeyResolver
from gateway.edge.authfailures import AuthFailures
from gateway.edge.credentials import (
    API_KEY_CHALLENGE,
    AmbiguousCredentials,
    InvalidApiKey,
    InvalidToken,
    TenantMismatch,
)
from gateway.edge.jwks import JwksKeys, KeySource, StaticKey
from gateway.settings import GatewaySettings
from shared.asgi import headers
from shared.context import request_context
from shared.contract import (
    ANONYMOUS,
    AuthenticationRequired,
    Identity,
    identity_from_claims,
    is_well_formed,
)
from shared.errors import Unauthorized
from shared.http import ServiceClient


def _invalid(detail: str) -> InvalidToken:
    return InvalidToken(
        detail, challenge=f'Bearer realm="portico", error="invalid_token", error_description="{detail}"'
    )


def key_source(settings: GatewaySettings, users: ServiceClient) -> KeySource:
    """Where the keys of access tokens come from: the settings' key, or the users service's JWKS
    (RS256 without `GATEWAY_JWT_PUBLIC_KEY`)."""
    if settings.jwt_algorithm == "HS256":
        assert settings.jwt_secret is not None  # guaranteed by the settings validator
        return StaticKey(settings.jwt_kid, settings.jwt_secret.get_secret_value())
    if settings.jwt_public_key:
        return StaticKey(settings.jwt_kid, settings.jwt_public_key)
    return JwksKeys(
        users,
        algorithm=settings.jwt_algorithm,
        refresh_seconds=settings.jwks_refresh_seconds,
        max_age_seconds=settings.jwks_max_age_seconds,
    )


class VerifiedTokens:
    """Tokens verified already, each with its identity until it expires (`exp` + leeway), at most
    `max_entries`, the oldest dropped first. A token is its own proof: what was true of it once is
    true until it expires, so a hit skips the signature check and nothing about revocation changes."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Identity]] = {}

    def entry(self, token: str) -> tuple[float, Identity] | None:
        """The token's identity and until when it holds (`exp` + leeway), if it was verified already."""
        entry = self._entries.get(token)
        if entry is None:
            return None
        if entry[0] <= time.time():
            del self._entries[token]
            return None
        return entry

    def put(self, token: str, until: float, identity: Identity) -> None:
        if self.max_entries <= 0:
            return
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[token] = (until, identity)


class JwtVerifier:
    """Verifies access tokens issued by the users service (HS256 or RS256), by their `kid`."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.algorithm = settings.jwt_algorithm
        self.issuer = settings.jwt_issuer
        self.leeway = settings.jwt_leeway_seconds
        self.verified = VerifiedTokens(settings.jwt_cache_size)

    async def verify(self, token: str, keys: KeySource) -> tuple[Identity, float]:
        """The token's identity and its `exp` (Unix seconds)."""
        cached = self.verified.entry(token)
        if cached is not None:
            until, identity = cached
            return identity, until - self.leeway
        try:
            header = jwt.get_unverified_header(token)
        except JWTError:
            raise _invalid("The token is malformed.") from None
        kid = header.get("kid")
        key = await keys.key(kid) if isinstance(kid, str) and kid else None
        if key is None:
            raise _invalid("The token was signed with an unknown key.")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[self.algorithm],
                issuer=self.issuer,
                options={"require_exp": True, "require_iat": True, "require_sub": True, "leeway": self.leeway},
            )
        except ExpiredSignatureError:
            raise _invalid("The token has expired.") from None
        except JWTError:
            raise _invalid("The token signature or claims are invalid.") from None
        tenant_id = claims.get("tid")
        if not isinstance(tenant_id, str) or not tenant_id:
            raise _invalid("The token names no tenant.")
        identity = identity_from_claims(claims)
        # jose has checked `exp` is a number.
        expires_at = float(claims["exp"])
        self.verified.put(token, expires_at + self.leeway, identity)
        return identity, expires_at


def claimed_plan(token: str) -> str | None:
    """The `plan` claim of a JWT's payload, unverified; None when there is none or it does not parse."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 4096:
        return None
    payload = parts[1]
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return None
    plan = claims.get("plan") if isinstance(claims, dict) else None
    return plan if isinstance(plan, str) else None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, and with what: an access token's expiry (Unix seconds), or the API key, which a
    connection that outlives its request checks again (`gateway/routes/events.py`)."""

    identity: Identity
    expires_at: float | None = None
    api_key: str | None = None


ANONYMOUS_CALLER = Caller(ANONYMOUS)


def _in_tenant(caller: Caller, tenant_header: bytes | None) -> Caller:
    """`caller`, unless the request's `X-Tenant-Id` names another tenant than its credentials do."""
    tenant_id = caller.identity.tenant_id
    if tenant_header is not None and tenant_id is not None and tenant_header.decode("latin-1") != tenant_id:
        raise TenantMismatch("X-Tenant-Id does not match the tenant of the credentials.")
    return caller


@dataclass(eq=False, slots=True, kw_only=True)
class Authenticator:
    tokens: JwtVerifier
    keys: KeySource
    api_keys: ApiKeyResolver
    failures: AuthFailures
    client_address: ClientAddress

    async def from_headers(self, scope: Scope) -> Caller:
        """The caller of an HTTP request; the anonymous caller when it sent no credentials."""
        authorization, api_key, tenant_header = headers(scope, b"authorization", b"x-api-key", b"x-tenant-id")
        if api_key is None and authorization is None:
            return ANONYMOUS_CALLER
        if api_key is not None and authorization is not None:
            raise AmbiguousCredentials("Send either Authorization or X-API-Key, not both.")
        if api_key is not None:
            caller = await self._verified(scope, api_key=api_key.decode("latin-1").strip())
        else:
            assert authorization is not None
            caller = await self._verified(scope, authorization=authorization.decode("latin-1"))
        return _in_tenant(caller, tenant_header)

    def known_plan(self, authorization: bytes | None, api_key: bytes | None) -> str | None:
        """The plan of a request's credentials as far as this process knows without asking anyone
        (admission ranks callers with it, before they are authenticated): a remembered API key's, a
        verified access token's, or the `plan` a token not verified yet claims. None when it cannot
        tell (an API key not looked up yet, a token that does not parse, no credentials)."""
        if api_key is not None:
            identity = self.api_keys.remembered(api_key.decode("latin-1").strip())
            return identity.plan if identity is not None else None
        if authorization is None:
            return None
        _, _, token = authorization.decode("latin-1").partition(" ")
        token = token.strip()
        cached = self.tokens.verified.entry(token)
        return cached[1].plan if cached is not None else claimed_plan(token)

    async def guard_failures(self, scope: Scope) -> str:
        """The client address of a request whose answer may itself be a failed authentication (a
        login, a sign-up); refused (429) when that address's failures are spent."""
        address = self.client_address(scope)
        await self.failures.check(address)
        return address

    async def count_failure(self, address: str) -> None:
        """Counts an answer of the service that was a failed authentication (a wrong password) for
        `address`; the answer itself stands."""
        await self.failures.failed(address)

    async def from_token(self, token: str | None, scope: Scope) -> Caller:
        """The caller of a WebSocket, whose `?token=` holds an access token or an API key; an
        `X-Tenant-Id` a client sends must name its tenant, as on a request."""
        if not token:
            raise AuthenticationRequired("Send the access token or API key as ?token=.")
        if is_well_formed(token):
            caller = await self._verified(scope, api_key=token)
        else:
            caller = await self._verified(scope, token=token)
        (tenant_header,) = headers(scope, b"x-tenant-id")
        return _in_tenant(caller, tenant_header)

    async def _verified(
        self, scope: Scope, *, api_key: str | None = None, authorization: str | None = None, token: str | None = None
    ) -> Caller:
        """The caller the credential names; a refusal counts as a failure of the client address (and
        becomes the 429 of a spent budget)."""
        try:
            if api_key is not None:
                return await self._api_key(api_key, scope)
            if authorization is not None:
                scheme, _, token = authorization.partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    raise _invalid("Use 'Authorization: Bearer <token>'.")
            assert token is not None
            identity, expires_at = await self.tokens.verify(token.strip(), self.keys)
            return Caller(identity, expires_at=expires_at)
        except Unauthorized as exc:
            refusal = await self.failures.failed(self.client_address(scope))
            raise (refusal or exc) from None

    async def _api_key(self, key: str, scope: Scope) -> Caller:
        identity: Identity | None = None
        # A key that cannot be one is refused without asking the users service.
        if is_well_formed(key):
            found, identity = self.api_keys.cached(key)
            if not found:
                # Only the users service can tell: not for an address whose failures are spent.
                await self.guard_failures(scope)
                started = time.perf_counter()
                identity = await self.api_keys.resolve(key)
                request_context(scope).event("apikey.lookup", started)
        if identity is None:
            raise InvalidApiKey("The API key is unknown, revoked or expired.", challenge=API_KEY_CHALLENGE)
        return Caller(identity, api_key=key)

    async def still_valid(self, caller: Caller) -> bool:
        """Whether an API key a connection was opened with still works (revoked or expired: no);
        raises what the users service raises when it cannot tell."""
        assert caller.api_key is not None
        return await self.api_keys.resolve(caller.api_key) is not None
