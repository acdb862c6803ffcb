"""Authentication: who is calling, as a pure ASGI stage, and the route dependencies that need it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from jose import ExpiredSignatureError, JWTError, jwt
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.edge.apikeys import ApiKeyResolver
from gateway.settings import GatewaySettings
from shared.contract import ANONYMOUS, AuthenticationRequired, Identity, is_well_formed
from shared.errors import BadRequest, Forbidden, PorticoError, Unauthorized, problem_response


class InvalidToken(Unauthorized):
    error_code = "INVALID_TOKEN"
    title = "Invalid access token"
    slug = "invalid-token"


class InvalidApiKey(Unauthorized):
    error_code = "INVALID_API_KEY"
    title = "Invalid API key"
    slug = "invalid-api-key"


class AmbiguousCredentials(BadRequest):
    error_code = "AMBIGUOUS_CREDENTIALS"
    title = "Ambiguous credentials"
    slug = "ambiguous-credentials"


API_KEY_CHALLENGE = 'ApiKey realm="portico", header="X-API-Key"'


class TenantMismatch(Forbidden):
    error_code = "TENANT_MISMATCH"
    title = "Tenant mismatch"
    slug = "tenant-mismatch"


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
        return Identity(
            subject=str(claims["sub"]),
            tenant_id=tenant_id,
            scopes=frozenset(str(claims.get("scope", "")).split()),
            plan=claims.get("plan"),
            role=claims.get("role"),
        )


class AuthenticationMiddleware:
    """Resolves the caller into `scope["state"]["identity"]`; anonymous when no credentials are sent.

    Credentials are `Authorization: Bearer <JWT>`, verified here, or `X-API-Key: sk_...`, resolved
    through the users service (`scope["state"]["api_keys"]`, built in the lifespan). Sending both is
    400. Bad credentials are refused here (401), whatever the route; routes that need a caller refuse
    anonymous ones through `require_principal`. An `X-Tenant-Id` that disagrees with the
    credentials' tenant is 403.
    """

    def __init__(self, app: ASGIApp, *, verifier: JwtVerifier) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization = api_key = tenant_header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"x-api-key":
                api_key = value
            elif name == b"x-tenant-id":
                tenant_header = value
        state = scope.setdefault("state", {})
        try:
            if api_key is None:
                identity = self._resolve(authorization)
            elif authorization is not None:
                raise AmbiguousCredentials("Send either Authorization or X-API-Key, not both.")
            else:
                identity = await self._resolve_key(state["api_keys"], api_key)
            if (
                tenant_header is not None
                and identity.tenant_id is not None
                and tenant_header.decode("latin-1") != identity.tenant_id
            ):
                raise TenantMismatch("X-Tenant-Id does not match the tenant of the credentials.")
        except PorticoError as exc:
            await problem_response(exc, state.get("request_id"))(scope, receive, send)
            return
        state["identity"] = identity
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


# Dependencies are `async def`: FastAPI runs plain `def` dependencies in a thread pool, a thread
# hop per request for a dictionary lookup.
async def current_identity(request: Request) -> Identity:
    identity: Identity = request.state.identity
    return identity


async def require_principal(request: Request) -> Identity:
    identity: Identity = request.state.identity
    if identity.is_anonymous:
        raise AuthenticationRequired("This route needs credentials.")
    return identity


class RequireScope:
    """Route dependency: the caller must hold `scope` (403 naming it otherwise)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(self, identity: Annotated[Identity, Depends(require_principal)]) -> Identity:
        identity.require_scope(self.scope)
        return identity


AnyCaller = Annotated[Identity, Depends(current_identity)]
Principal = Annotated[Identity, Depends(require_principal)]
