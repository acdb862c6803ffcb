"""The errors the users service answers with: part of its API, as its schemas are. The gateway
imports them (never the service's code) to document and relay what it forwards."""

from __future__ import annotations

from shared.errors import Conflict, Forbidden, NotFound, TooManyRequests, Unauthorized


class UserNotFound(NotFound, code="USER_NOT_FOUND", title="User not found", resource="user"):
    """No such user in the caller's tenant."""


class InvalidCredentials(Unauthorized, code="INVALID_CREDENTIALS", title="Invalid credentials"):
    """A login with an unknown email or a wrong password (both answer alike)."""


class LoginThrottled(TooManyRequests, code="LOGIN_THROTTLED", title="Too many wrong passwords"):
    """The account's recent wrong passwords make its next login wait: `Retry-After`, and no password
    is checked meanwhile."""


class ApiKeyNotFound(NotFound, code="API_KEY_NOT_FOUND", title="API key not found", resource="API key"):
    """Revoking or rotating a key the caller cannot see (another user's, another tenant's, or none)."""


class UserRequired(Forbidden, code="USER_REQUIRED", title="A user is required"):
    """An API key tried what only a user's access token may do (managing API keys, setting credit
    limits)."""


class ApiKeyNotRotatable(Conflict, code="API_KEY_NOT_ROTATABLE", title="API key cannot be rotated"):
    """Rotating a key that is revoked, already rotated or expired."""


class EmailTaken(Conflict, code="EMAIL_TAKEN", title="Email already registered"):
    """Sign-up or a new user with an email already registered (emails are unique across the system)."""


class ScopeNotHeld(Forbidden, code="SCOPE_NOT_HELD", title="Scope not held"):
    """Creating a user, an API key or a rotation that would grant scopes the caller does not hold:
    `missing_scopes`."""
