"""Routes of the users service. The gateway reaches them with an internal identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Form, Request, Response

from services.users import service
from services.users.models import ApiKey
from services.users.repository import ApiKeyRepository, UserRepository
from services.users.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    ApiKeyResolve,
    ApiKeyResolved,
    ApiKeyRotate,
    ApiKeyRotated,
    TenantCreate,
    TenantCreated,
    TenantOut,
    TokenOut,
    UserCreate,
    UserOut,
)
from services.users.security import TokenIssuer
from services.users.settings import UsersSettings
from shared.db import SessionDep
from shared.errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed
from shared.identity import IdentityDep, TenantIdentityDep
from shared.pagination import DEFAULT_LIMIT, Cursor, CursorQuery, LimitQuery, Page, page_of
from shared.text import PLAIN_TEXT_PATTERN

router = APIRouter()


async def get_repo(session: SessionDep) -> UserRepository:
    return UserRepository(session)


async def get_issuer(request: Request) -> TokenIssuer:
    issuer: TokenIssuer = request.state.token_issuer
    return issuer


async def get_key_repo(session: SessionDep) -> ApiKeyRepository:
    return ApiKeyRepository(session)


RepoDep = Annotated[UserRepository, Depends(get_repo)]
KeyRepoDep = Annotated[ApiKeyRepository, Depends(get_key_repo)]
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
    username: Annotated[str, Form(max_length=320, pattern=PLAIN_TEXT_PATTERN)],
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
async def me(repo: RepoDep, keys: KeyRepoDep, identity: TenantIdentityDep) -> UserOut:
    return UserOut.model_validate(await service.get_me(repo, keys, identity))


@router.get("/users/{user_id}", response_model=UserOut)
async def get_user(user_id: str, repo: RepoDep, identity: TenantIdentityDep) -> UserOut:
    identity.require_scope("users:read")
    user = await service.get_user(repo, identity.require_tenant(), user_id)
    return UserOut.model_validate(user)


def key_out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        id=key.id,
        name=key.name,
        scopes=sorted(key.scope_set),
        hint=key.hint,
        tenant_id=key.tenant_id,
        created_by=key.created_by,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
        expires_at=key.expires_at,
        replaced_by=key.replaced_by,
    )


def key_created(key: ApiKey, raw: str) -> ApiKeyCreated:
    return ApiKeyCreated(**key_out(key).model_dump(), api_key=raw)


KEY_ERRORS = {**Forbidden.openapi_response(), **NotFound.openapi_response()}


@router.post("/api-keys", status_code=201, response_model=ApiKeyCreated, responses=KEY_ERRORS)
async def create_api_key(
    data: ApiKeyCreate, repo: RepoDep, keys: KeyRepoDep, identity: TenantIdentityDep, response: Response
) -> ApiKeyCreated:
    response.headers.update(NO_STORE)
    key, raw = await service.create_api_key(repo, keys, identity, data)
    return key_created(key, raw)


@router.get("/api-keys", response_model=Page[ApiKeyOut], responses=Forbidden.openapi_response())
async def list_api_keys(
    keys: KeyRepoDep, identity: TenantIdentityDep, limit: LimitQuery = DEFAULT_LIMIT, cursor: CursorQuery = None
) -> Page[ApiKeyOut]:
    rows = await service.list_api_keys(keys, identity, Cursor.decode(cursor), limit)
    return page_of(rows, limit, key_out)


@router.delete("/api-keys/{key_id}", status_code=204, responses=KEY_ERRORS)
async def revoke_api_key(key_id: str, keys: KeyRepoDep, identity: TenantIdentityDep) -> Response:
    await service.revoke_api_key(keys, identity, key_id)
    return Response(status_code=204)


@router.post(
    "/api-keys/{key_id}/rotate",
    status_code=201,
    response_model=ApiKeyRotated,
    responses={**KEY_ERRORS, **Conflict.openapi_response()},
)
async def rotate_api_key(
    key_id: str,
    request: Request,
    keys: KeyRepoDep,
    identity: TenantIdentityDep,
    response: Response,
    data: Annotated[ApiKeyRotate | None, Body()] = None,
) -> ApiKeyRotated:
    response.headers.update(NO_STORE)
    settings: UsersSettings = request.state.settings
    grace = data.grace_seconds if data is not None else None
    new, raw, old = await service.rotate_api_key(
        keys, identity, key_id, settings.api_key_rotation_grace_seconds if grace is None else grace
    )
    return ApiKeyRotated(**key_created(new, raw).model_dump(), previous=key_out(old))


@router.post("/api-keys/resolve", response_model=ApiKeyResolved, responses=NotFound.openapi_response())
async def resolve_api_key(data: ApiKeyResolve, keys: KeyRepoDep, _: IdentityDep) -> ApiKeyResolved:
    """For the gateway: the identity behind a key, by the key's SHA-256 (the key itself never travels)."""
    return await service.resolve_api_key(keys, data.key_hash)
