"""Tenants, tokens and users: forwarded to the users service. Signing up and logging in need no
credentials, so they reach the service as nobody; an access token is a secret (`no-store`)."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.deps import AnyCaller, Principal, readers_and_writers
from gateway.openapi import FORM
from gateway.routes.forward import Forward, add_forwards
from services.users.errors import (
    EmailTaken,
    InvalidCredentials,
    PlanNotSelfService,
    TokenFormRequired,
    UserNotFound,
    UserRequired,
)
from services.users.schemas import TenantCreate, TenantCreated, TokenOut, TokenRequest, UserCreate, UserOut, UserUpdate

router = APIRouter(prefix="/v1", tags=["users"])
# Public, outside /v1: where verifiers of access tokens find their keys.
well_known = APIRouter(tags=["users"])

Reader, Writer = readers_and_writers("users")

add_forwards(
    router,
    "users",
    [
        Forward(
            "POST",
            "/tenants",
            AnyCaller,
            "create_tenant",
            "Create a tenant and its first admin user",
            status_code=201,
            body=TenantCreate,
            answer=TenantCreated,
            errors=[EmailTaken, PlanNotSelfService],
            anonymous=True,
            failure_statuses=frozenset({409}),
        ),
        Forward(
            "POST",
            "/auth/token",
            AnyCaller,
            "issue_token",
            "Exchange email and password for an access token (OAuth2 password form)",
            body=TokenRequest,
            body_media_type=FORM,
            answer=TokenOut,
            errors=[InvalidCredentials, TokenFormRequired],
            anonymous=True,
            failure_statuses=frozenset({401}),
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
        ),
        Forward("GET", "/users/me", Principal, "me", "The calling user", answer=UserOut, errors=[UserNotFound]),
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
    ],
)

add_forwards(
    well_known,
    "users",
    [
        Forward(
            "GET",
            "/.well-known/jwks.json",
            AnyCaller,
            "jwks",
            "The public keys access tokens are signed with (JWKS, RFC 7517); empty with HS256",
            anonymous=True,
        )
    ],
)
