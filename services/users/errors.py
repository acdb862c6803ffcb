"""The errors the users service answers with: part of its API, as its schemas are. The gateway
imports them (never the service's code) to document and relay what it forwards."""

from __future__ import annotations

from shared.errors import Conflict, Forbidden, NotFound, TooManyRequests, Unauthorized, UnsupportedMediaType


class UserNotFound(NotFound, code="USER_NOT_FOUND", title="User not found", resource="user"): ...


class InvalidCredentials(Unauthorized, code="INVALID_CREDENTIALS", title="Invalid credentials"): ...


class LoginThrottled(TooManyRequests, code="LOGIN_THROTTLED", title="Too many wrong passwords"): ...


class ApiKeyNotFound(NotFound, code="API_KEY_NOT_FOUND", title="API key not found", resource="API key"): ...


class UserRequired(Forbidden, code="USER_REQUIRED", title="A user is required"): ...


class ApiKeyNotRotatable(Conflict, code="API_KEY_NOT_ROTATABLE", title="API key cannot be rotated"): ...


class EmailTaken(Conflict, code="EMAIL_TAKEN", title="Email already registered"): ...


class ScopeNotHeld(Forbidden, code="SCOPE_NOT_HELD", title="Scope not held"): ...


class PlanNotSelfService(Forbidden, code="PLAN_NOT_SELF_SERVICE", title="Plan not available at sign-up"): ...


class TenantNotFound(NotFound, code="TENANT_NOT_FOUND", title="Tenant not found", resource="tenant"): ...


class TokenFormRequired(UnsupportedMediaType, title="A form is required"):
    """The token route takes the OAuth2 password form, not JSON: said so, rather than a 422 of fields
    missing from a form the client never meant to send."""
