"""Authentication: who is calling, as a pure ASGI stage. It hands the principal to the stages and
routes after it through the request context (`shared/context.py`); routes ask for it through
`gateway/deps.py`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jose import ExpiredSignatureError, JWTError, jwt
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.edge.apikeys import ApiKeyResolver
from gateway.settings import GatewaySettings
from shared.asgi import headers
from shared.context import request_context
from shared.contract import ANONYMOUS, Identity, identity_from_claims, is_well_formed
from shared.errors import BadRequest, Forbidden, PorticoError, Unauthorized, send_problem

if TYPE_CHECKING:
    from gateway.state import GatewaySlot


class InvalidToken(Unauthorized, code="INVALID_TOKEN", title="Invalid access token"): ...


class InvalidApiKey(Unauthorized, code="INVALID_API_KEY", title="Invalid API key"): ...


class AmbiguousCredentials(BadRequest, code="AMBIGUOUS_CREDENTIALS", title="Ambiguous credentials"): ...


API_KEY_CHALLENGE = 'ApiKey realm="portico", header="X-API-Key"'


class TenantMismatch(Forbidden, code="TENANT_MISMATCH", title="Tenant mismatch"): ...


def _invalid(detail: str) -> InvalidToken:
    return InvalidToken(
        detail, challenge=f'Bearer realm="portico", error="invalid_token", error_description="{detail}"'
    )


class JwtVerifier:
    """Verifies access tokens issued by the users service (HS256 or RS256, with a known `kid`)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.algorithm = settings.jwt_algorithm
        self.kid = settings.jwt_kid
        self.issuer = settings.jwt_issuer
        self.leeway = settings.jwt_leeway_seconds
        if self.algorithm == "RS256":
            assert settings.jwt_public_key is not None
            self._key = settings.jwt_public_key
        else:
            assert settings.jwt_secret is not None
            self._key = settings.jwt_secret.get_secret_value()

    def verify(self, token: str) -> Identity:
        return self.verify_with_expiry(token)[0]

    def verify_with_expiry(self, token: str) -> tuple[Identity, float]:
        """The token's identity and its `exp` (Unix seconds)."""
        try:
            header = jwt.get_unverified_header(token)
        except JWTError:
            raise _invalid("The token is malformed.") from None
        if header.get("kid") != self.kid:
            raise _invalid("The token was signed with an unknown key.")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
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
        return identity_from_claims(claims), float(claims["exp"])


class AuthenticationMiddleware:
    """Resolves the caller into the request context's principal; anonymous when no credentials are sent.

    Credentials are `Authorization: Bearer <JWT>`, verified here, or `X-API-Key: sk_...`, resolved
    through the users service (the lifespan's `ApiKeyResolver`). Sending both is 400. Bad credentials
    are refused here (401), whatever the route; routes that need a caller refuse anonymous ones
    through `Principal` (`gateway/deps.py`). An `X-Tenant-Id` that disagrees with the credentials'
    tenant is 403.
    """

    def __init__(self, app: ASGIApp, *, verifier: JwtVerifier, state: GatewaySlot) -> None:
        self.app = app
        self.verifier = verifier
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization, api_key, tenant_header = headers(scope, b"authorization", b"x-api-key", b"x-tenant-id")
        try:
            if api_key is None:
                identity = self._resolve(authorization)
            elif authorization is not None:
                raise AmbiguousCredentials("Send either Authorization or X-API-Key, not both.")
            else:
                identity = await self._resolve_key(self.state.value.api_keys, api_key)
            if (
                tenant_header is not None
                and identity.tenant_id is not None
                and tenant_header.decode("latin-1") != identity.tenant_id
            ):
                raise TenantMismatch("X-Tenant-Id does not match the tenant of the credentials.")
        except PorticoError as exc:
            await send_problem(exc, scope, receive, send)
            return
        request_context(scope).principal = identity
        await self.app(scope, receive, send)

    def _resolve(self, authorization: bytes | None) -> Identity:
        if authorization is None:
            return ANONYMOUS
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _invalid("Use 'Authorization: Bearer <token>'.")
        return self.verifier.verify(token.strip())

    @staticmethod
    async def _resolve_key(resolver: ApiKeyResolver, raw: bytes) -> Identity:
        key = raw.decode("latin-1").strip()
        # A key that cannot be one is refused without asking the users service.
        identity = await resolver.resolve(key) if is_well_formed(key) else None
        if identity is None:
            raise InvalidApiKey("The API key is unknown, revoked or expired.", challenge=API_KEY_CHALLENGE)
        return identity
