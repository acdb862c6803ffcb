"""Authentication: who is calling, as a pure ASGI stage. It hands the principal to the stages and
routes after it through the request context (`shared/context.py`); routes ask for it through
`gateway/deps.py`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from fastapi.routing import APIRoute
from jose import ExpiredSignatureError, JWTError, jwt
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.edge.addresses import ClientAddress
from gateway.edge.apikeys import ApiKeyResolver
from gateway.edge.authfailures import AuthFailures
from gateway.edge.credentials import AmbiguousCredentials, InvalidApiKey, InvalidToken, TenantMismatch
from gateway.edge.jwks import JwksKeys, KeySource, StaticKey
from gateway.settings import GatewaySettings
from shared.asgi import headers
from shared.context import request_context
from shared.contract import ANONYMOUS, Identity, identity_from_claims, is_well_formed
from shared.errors import PorticoError, Unauthorized, send_problem
from shared.http import ServiceClient

if TYPE_CHECKING:
    from gateway.state import GatewaySlot


API_KEY_CHALLENGE = 'ApiKey realm="portico", header="X-API-Key"'


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

    def get(self, token: str) -> Identity | None:
        entry = self.entry(token)
        return entry[1] if entry is not None else None

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

    async def verify(self, token: str, keys: KeySource) -> Identity:
        return (await self.verify_with_expiry(token, keys))[0]

    async def verify_with_expiry(self, token: str, keys: KeySource) -> tuple[Identity, float]:
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


class AnonymousRoutes:
    """The routes forwarded as nobody (sign-up, login), matched before routing, each with the statuses
    of the service's answer that count as a failed authentication."""

    def __init__(self, routes: Iterable[tuple[APIRoute, frozenset[int]]]) -> None:
        self.entries = [(route, frozenset(route.methods or ()), failures) for route, failures in routes]

    def match(self, scope: Scope) -> frozenset[int] | None:
        method, path = scope["method"], scope["path"]
        for route, methods, failures in self.entries:
            if method in methods and route.path_regex.match(path):
                return failures
        return None


class AuthenticationMiddleware:
    """Resolves the caller into the request context's principal; anonymous when no credentials are sent.

    Credentials are `Authorization: Bearer <JWT>`, verified here, or `X-API-Key: sk_...`, resolved
    through the users service (the lifespan's `ApiKeyResolver`). Sending both is 400. Bad credentials
    are refused here (401), whatever the route; routes that need a caller refuse anonymous ones
    through `Principal` (`gateway/deps.py`). An `X-Tenant-Id` that disagrees with the credentials'
    tenant is 403.

    Every failed authentication counts against the client address's own limit (`AuthFailures`,
    `gateway/edge/authfailures.py`), checked before any downstream call made to authenticate. On the
    routes forwarded as nobody (sign-up, login) credentials are not looked at at all: the caller is its
    client address, for the failure limit and for the rate limits after this stage, so a token of
    one's own tenant lifts no limit there.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        state: GatewaySlot,
        anonymous: Iterable[tuple[APIRoute, frozenset[int]]],
        trusted_proxies: Iterable[str],
    ) -> None:
        self.app = app
        self.state = state
        self.anonymous_routes = AnonymousRoutes(anonymous)
        self.client_address = ClientAddress(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        failures = self.state.value.auth_failures
        anonymous_failures = self.anonymous_routes.match(scope) if self.anonymous_routes.entries else None
        try:
            if anonymous_failures is None:
                identity = await self._authenticate(scope, failures)
            else:
                identity = ANONYMOUS
                if anonymous_failures:
                    address = self.client_address(scope)
                    await failures.check(address)
                    send = self._counting(send, failures, address, anonymous_failures)
        except PorticoError as exc:
            await send_problem(exc, scope, receive, send)
            return
        request_context(scope).principal = identity
        await self.app(scope, receive, send)

    @staticmethod
    def _counting(send: Send, failures: AuthFailures, address: str, statuses: frozenset[int]) -> Send:
        """`send`, counting a failure of `address` when the answer's status is one of `statuses`."""

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in statuses:
                # The answer is the service's own either way: the failure only counts towards the next.
                await failures.failed(address)
            await send(message)

        return counting

    async def _authenticate(self, scope: Scope, failures: AuthFailures) -> Identity:
        authorization, api_key, tenant_header = headers(scope, b"authorization", b"x-api-key", b"x-tenant-id")
        if api_key is None and authorization is None:
            return ANONYMOUS
        if api_key is not None and authorization is not None:
            raise AmbiguousCredentials("Send either Authorization or X-API-Key, not both.")
        try:
            if api_key is None:
                assert authorization is not None
                identity = await self._resolve(authorization)
            else:
                identity = await self._resolve_key(self.state.value.api_keys, api_key, failures, scope)
        except Unauthorized as exc:
            refusal = await failures.failed(self.client_address(scope))
            raise (refusal or exc) from None
        if (
            tenant_header is not None
            and identity.tenant_id is not None
            and tenant_header.decode("latin-1") != identity.tenant_id
        ):
            raise TenantMismatch("X-Tenant-Id does not match the tenant of the credentials.")
        return identity

    async def _resolve(self, authorization: bytes) -> Identity:
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _invalid("Use 'Authorization: Bearer <token>'.")
        return await self.state.value.tokens.verify(token.strip(), self.state.value.jwt_keys)

    async def _resolve_key(
        self, resolver: ApiKeyResolver, raw: bytes, failures: AuthFailures, scope: Scope
    ) -> Identity:
        key = raw.decode("latin-1").strip()
        identity: Identity | None = None
        # A key that cannot be one is refused without asking the users service.
        if is_well_formed(key):
            found, identity = resolver.cached(key)
            if not found:
                # Only the users service can tell: not for an address whose failures are spent.
                await failures.check(self.client_address(scope))
                identity = await resolver.resolve(key)
        if identity is None:
            raise InvalidApiKey("The API key is unknown, revoked or expired.", challenge=API_KEY_CHALLENGE)
        return identity
