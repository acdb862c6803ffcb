"""The errors of authentication (`gateway/edge/authentication.py`), apart from it so that what documents
them (`gateway/openapi.py`) and `Access` (`gateway/edge/access.py`, for its challenge) need not import
the `Authenticator` and all it runs with (JWT verification, the API key resolver, the stores)."""

from __future__ import annotations

from shared.errors import BadRequest, Forbidden, Unauthorized

API_KEY_CHALLENGE = 'ApiKey realm="portico", header="X-API-Key"'


class InvalidToken(Unauthorized, code="INVALID_TOKEN", title="Invalid access token"):
    """An access token that does not verify (signature, algorithm, unknown `kid`, expired, missing
    claims): with `WWW-Authenticate: Bearer ... error="invalid_token"`."""


class InvalidApiKey(Unauthorized, code="INVALID_API_KEY", title="Invalid API key"):
    """An API key that is malformed, unknown, revoked or expired: with
    `WWW-Authenticate: ApiKey realm="portico", header="X-API-Key"`."""


class AmbiguousCredentials(BadRequest, code="AMBIGUOUS_CREDENTIALS", title="Ambiguous credentials"):
    """A request carried both `Authorization` and `X-API-Key`."""


class TenantMismatch(Forbidden, code="TENANT_MISMATCH", title="Tenant mismatch"):
    """An `X-Tenant-Id` that disagrees with the tenant of the token or key."""
