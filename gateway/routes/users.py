"""Tenants, tokens and users: forwarded to the users service. Signing up and logging in need no
credentials, so they reach the service as nobody; an access token is a secret (`no-store`)."""

from __future__ import annotations

from gateway.edge.access import ANONYMOUS_ACCESS, PRINCIPAL, Access
from gateway.openapi import FORM
from gateway.routes.forward import Forward, ForwardRouter
from gateway.settings import Quota
from services.users.errors import (
    CREATE_TENANT_ERRORS,
    CREATE_USER_ERRORS,
    GET_USER_ERRORS,
    ISSUE_TOKEN_ERRORS,
    ME_ERRORS,
    UPDATE_USER_ERRORS,
)
from services.users.schemas import (
    Jwks,
    TenantCreate,
    TenantCreated,
    TokenOut,
    TokenRequest,
    UserCreate,
    UserOut,
    UserUpdate,
)
from shared.contract import JWKS_PATH, USERS_READ, USERS_WRITE

router = ForwardRouter("users", prefix="/v1", tags=["users"])
# Public, outside /v1: where verifiers of access tokens find their keys.
well_known = ForwardRouter("users", tags=["users"])

Reader, Writer = Access(scope=USERS_READ), Access(scope=USERS_WRITE)
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
        errors=CREATE_TENANT_ERRORS,
        description=(
            "Sign-up: creates a tenant on a self-service plan and its first user, an admin. No credentials; "
            "then get a token with `POST /v1/auth/token` using `admin_email` as `username`. An email is "
            "unique across every tenant (409 `EMAIL_TAKEN`); a plan sign-up does not offer is 403 "
            "`PLAN_NOT_SELF_SERVICE` with the `allowed_plans`."
        ),
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
        errors=ISSUE_TOKEN_ERRORS,
        description=(
            "The OAuth2 password grant: a form (`application/x-www-form-urlencoded`, not JSON: a JSON body "
            "is 415) with the user's email as `username` and `password`. Answers a bearer access token "
            "valid `expires_in` seconds; send it as `Authorization: Bearer <token>`. Wrong credentials are "
            "401 `INVALID_CREDENTIALS`; repeated wrong passwords for an account are 429 `LOGIN_THROTTLED`."
        ),
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
        errors=CREATE_USER_ERRORS,
        description=(
            "An admin adds a user (an admin or a member) to the caller's tenant; the new user logs in with "
            "`POST /v1/auth/token`. Needs the `users:write` scope."
        ),
        # Emails are unique across every tenant: a taken one says an account exists somewhere, so
        # probing them spends the address's failed-authentication budget, as sign-up does.
        failure_statuses=frozenset({409}),
    ),
    Forward(
        "GET",
        "/users/me",
        PRINCIPAL,
        "me",
        "The calling user",
        answer=UserOut,
        errors=ME_ERRORS,
        description=(
            "The user the credentials were issued to: for an access token its user, for an API key the user "
            "who created the key. Includes the credit limit in force."
        ),
    ),
    Forward(
        "GET",
        "/users/{user_id}",
        Reader,
        "get_user",
        "A user of the caller's tenant",
        answer=UserOut,
        errors=GET_USER_ERRORS,
        description="One user of the caller's tenant; a user of another tenant is 404, as one that does not exist.",
    ),
    Forward(
        "PATCH",
        "/users/{user_id}",
        Writer,
        "update_user",
        "Set a user's credit limit (an admin's token, never an API key); null returns to the plan's default",
        body=UserUpdate,
        answer=UserOut,
        errors=UPDATE_USER_ERRORS,
        description=(
            "An admin sets a user's `credit_limit_cents`, what their open orders may add up to; `null` returns "
            "the user to their plan's default. Needs an admin's access token: an API key is refused with 403 "
            "`USER_REQUIRED`."
        ),
    ),
)

well_known.add(
    Forward(
        "GET",
        JWKS_PATH,
        ANONYMOUS_ACCESS,
        "jwks",
        "The public keys access tokens are signed with (JWKS, RFC 7517); empty with HS256",
        answer=Jwks,
        description=(
            "For services that verify Portico's access tokens themselves: the current signing key, the next "
            "one and those whose tokens may still be valid, by `kid`. No credentials needed."
        ),
    )
)
