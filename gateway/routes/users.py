"""Tenants, tokens and users: forwarded to the users service. Signing up and logging in need no
credentials, so they reach the service as nobody; an access token is a secret (`no-store`)."""

from __future__ import annotations

from gateway.edge.access import ANONYMOUS_ACCESS, PRINCIPAL, readers_and_writers
from gateway.openapi import FORM
from gateway.routes.forward import Forward, ForwardRouter
from gateway.settings import Quota
from services.users.errors import (
    EmailTaken,
    InvalidCredentials,
    PlanNotSelfService,
    TokenFormRequired,
    UserNotFound,
    UserRequired,
)
from services.users.schemas import TenantCreate, TenantCreated, TokenOut, TokenRequest, UserCreate, UserOut, UserUpdate

router = ForwardRouter("users", prefix="/v1", tags=["users"])
# Public, outside /v1: where verifiers of access tokens find their keys.
well_known = ForwardRouter("users", tags=["users"])

Reader, Writer = readers_and_writers("users")
# Sign-up and login, per client address, on top of the anonymous quota: guessing costs a password hash.
ANONYMOUS_WRITES = Quota(120, 60)

router.add(
    Forward(
        "POST",
        "/tenants",
        ANONYMOUS_ACCESS,
        "create_tenant",
        "Create a tenant and its first admin user",
        status_code=201,
        body=TenantCreate,
        answer=TenantCreated,
        errors=[EmailTaken, PlanNotSelfService],
        # A taken email tells the address that the account exists: a failed authentication.
        failure_statuses=frozenset({409}),
        rate_limit=ANONYMOUS_WRITES,
    ),
    Forward(
        "POST",
        "/auth/token",
        ANONYMOUS_ACCESS,
        "issue_token",
        "Exchange email and password for an access token (OAuth2 password form)",
        body=TokenRequest,
        body_media_type=FORM,
        answer=TokenOut,
        errors=[InvalidCredentials, TokenFormRequired],
        failure_statuses=frozenset({401}),
        secret=True,
        rate_limit=ANONYMOUS_WRITES,
    ),
    Forward(
        "POST",
        "/users",
        Writer,
        "create_user",
        "Create a user in the caller's tenant (admin)",
        status_code=201,
        body=UserCreate,
        answer=UserOut,
        errors=[EmailTaken],
        # Emails are unique across every tenant: a taken one says an account exists somewhere, so
        # probing them spends the address's failed-authentication budget, as sign-up does.
        failure_statuses=frozenset({409}),
    ),
    Forward("GET", "/users/me", PRINCIPAL, "me", "The calling user", answer=UserOut, errors=[UserNotFound]),
    Forward(
        "GET",
        "/users/{user_id}",
        Reader,
        "get_user",
        "A user of the caller's tenant",
        answer=UserOut,
        errors=[UserNotFound],
    ),
    Forward(
        "PATCH",
        "/users/{user_id}",
        Writer,
        "update_user",
        "Set a user's credit limit (an admin's token, never an API key); null returns to the plan's default",
        body=UserUpdate,
        answer=UserOut,
        errors=[UserNotFound, UserRequired],
    ),
)

well_known.add(
    Forward(
        "GET",
        "/.well-known/jwks.json",
        ANONYMOUS_ACCESS,
        "jwks",
        "The public keys access tokens are signed with (JWKS, RFC 7517); empty with HS256",
    )
)
