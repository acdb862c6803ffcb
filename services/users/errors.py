"""The errors the users service answers with: part of its API, as its schemas are. The gateway
imports them (never the service's code) to document and relay what it forwards."""

from __future__ import annotations

from shared.errors import (
    Conflict,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
)
from shared.pagination import InvalidCursor


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


class PlanNotSelfService(Forbidden, code="PLAN_NOT_SELF_SERVICE", title="Plan not available at sign-up"):
    """Sign-up on a plan `USERS_SIGNUP_PLANS` does not list (`allowed_plans`): an operator gives it
    (`python -m services.users set-plan`)."""


class TenantNotFound(NotFound, code="TENANT_NOT_FOUND", title="Tenant not found", resource="tenant"):
    """The operator's `set-plan` named no tenant."""


class TokenFormRequired(UnsupportedMediaType, title="A form is required"):
    """A token request whose body is no form (JSON, most often): the route takes the OAuth2 password
    form, and says so rather than answering a 422 of fields missing from a form never meant."""


class HashingBusy(ServiceUnavailable, code="PASSWORD_HASHING_BUSY", title="Service Unavailable"):
    """Too many password checks are waiting, or this one waited
    `USERS_PASSWORD_HASH_QUEUE_TIMEOUT_SECONDS`: `Retry-After: 1`."""


class NoSigningKey(ServiceUnavailable, code="NO_SIGNING_KEY", title="Service Unavailable"):
    """The users service has not loaded a signing key yet (just started, its keys still being read or
    made): `Retry-After: 1`."""


# The errors each route answers besides the common ones (422 for a parameter or body, 403 for a scope
# the caller lacks), declared once: the route's `responses=` here and the gateway's `Forward` row for
# it both list these, so the two documents agree.
# A password is hashed or checked on sign-up, login and a new user: each may find the hashing queue full.
CREATE_TENANT_ERRORS = (EmailTaken, PlanNotSelfService, HashingBusy)
ISSUE_TOKEN_ERRORS = (InvalidCredentials, TokenFormRequired, LoginThrottled, HashingBusy, NoSigningKey)
CREATE_USER_ERRORS = (EmailTaken, HashingBusy)
ME_ERRORS = (UserNotFound,)
GET_USER_ERRORS = (UserNotFound,)
UPDATE_USER_ERRORS = (UserNotFound, UserRequired)
# API keys are managed with a user's access token: every key route answers USER_REQUIRED to a key.
CREATE_API_KEY_ERRORS = (UserRequired, ScopeNotHeld)
LIST_API_KEYS_ERRORS = (UserRequired, InvalidCursor)
REVOKE_API_KEY_ERRORS = (UserRequired, ApiKeyNotFound)
ROTATE_API_KEY_ERRORS = (UserRequired, ApiKeyNotFound, ApiKeyNotRotatable)
# The gateway's own call: revoked, expired and unknown keys alike.
RESOLVE_API_KEY_ERRORS = (ApiKeyNotFound,)
