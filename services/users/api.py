"""Routes of the users service. The gateway reaches them with an internal identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, Response

from services.users import service
from services.users.repository import UserRepository
from services.users.schemas import TenantCreate, TenantCreated, TenantOut, TokenOut, UserCreate, UserOut
from services.users.security import TokenIssuer
from shared.db import SessionDep
from shared.errors import Conflict, Unauthorized, ValidationFailed
from shared.identity import IdentityDep, TenantIdentityDep

router = APIRouter()


async def get_repo(session: SessionDep) -> UserRepository:
    return UserRepository(session)


async def get_issuer(request: Request) -> TokenIssuer:
    issuer: TokenIssuer = request.state.token_issuer
    return issuer


RepoDep = Annotated[UserRepository, Depends(get_repo)]
IssuerDep = Annotated[TokenIssuer, Depends(get_issuer)]
NO_STORE = {"Cache-Control": "no-store"}


@router.post(
    "/tenants",
    status_code=201,
    response_model=TenantCreated,
    responses={**ValidationFailed.openapi_response(), **Conflict.openapi_response()},
)
async def create_tenant(data: TenantCreate, repo: RepoDep, _: IdentityDep) -> TenantCreated:
    tenant, admin = await service.bootstrap_tenant(repo, data)
    return TenantCreated(tenant=TenantOut.model_validate(tenant), user=UserOut.model_validate(admin))


@router.post("/auth/token", response_model=TokenOut, responses=Unauthorized.openapi_response())
async def token(
    username: Annotated[str, Form(max_length=320)],
    password: Annotated[str, Form(max_length=128)],
    repo: RepoDep,
    issuer: IssuerDep,
    response: Response,
    _: IdentityDep,
) -> TokenOut:
    response.headers.update(NO_STORE)
    return await service.issue_token(repo, issuer, username, password)


@router.post("/users", status_code=201, response_model=UserOut, responses=Conflict.openapi_response())
async def create_user(data: UserCreate, repo: RepoDep, identity: TenantIdentityDep) -> UserOut:
    # Only admins hold users:write (members never do), so the scope is the admin check.
    identity.require_scope("users:write")
    user = await service.create_user(repo, identity.require_tenant(), data)
    return UserOut.model_validate(user)


@router.get("/users/me", response_model=UserOut)
async def me(repo: RepoDep, identity: TenantIdentityDep) -> UserOut:
    user = await service.get_user(repo, identity.require_tenant(), identity.subject)
    return UserOut.model_validate(user)


@router.get("/users/{user_id}", response_model=UserOut)
async def get_user(user_id: str, repo: RepoDep, identity: TenantIdentityDep) -> UserOut:
    identity.require_scope("users:read")
    user = await service.get_user(repo, identity.require_tenant(), user_id)
    return UserOut.model_validate(user)
