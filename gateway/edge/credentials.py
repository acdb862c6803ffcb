"""The errors of the authentication stage (`gateway/auth.py`), apart from it so that what documents
them (`gateway/openapi.py`) need not import the stage, which imports the route tables."""

from __future__ import annotations

from shared.errors import BadRequest, Forbidden, Unauthorized


class InvalidToken(Unauthorized, code="INVALID_TOKEN", title="Invalid access token"): ...


class InvalidApiKey(Unauthorized, code="INVALID_API_KEY", title="Invalid API key"): ...


class AmbiguousCredentials(BadRequest, code="AMBIGUOUS_CREDENTIALS", title="Ambiguous credentials"): ...


class TenantMismatch(Forbidden, code="TENANT_MISMATCH", title="Tenant mismatch"): ...
