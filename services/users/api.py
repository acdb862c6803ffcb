"""Routes of the users service. The gateway reaches them with an internal identity; who may call
each route is its dependency (`deps.py`), and each handler is one call of `service.py`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Form, Request, Response

from services.users import service
from services.users.deps import (
    HasherDep,
    IssuerDep,
    KeyManager,
    KeysDep,
    SettingsDep,
    TenantCaller,
    ThrottleDep,
    UsersDep,
    UsersRead,
    UsersWrite,
)
from services.users.errors import (
    CREATE_API_KEY_ERRORS,
    CREATE_TENANT_ERRORS,
    CREATE_USER_ERRORS,
    GET_USER_ERRORS,
    ISSUE_TOKEN_ERRORS,
    LIST_API_KEYS_ERRORS,
    ME_ERRORS,
    RESOLVE_API_KEY_ERRORS,
    REVOKE_API_KEY_ERRORS,
    ROTATE_API_KEY_ERRORS,
    UPDATE_USER_ERRORS,
    TokenFormRequired,
)
from services.users.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    ApiKeyResolve,
    ApiKeyResolved,
    ApiKeyRotate,
    ApiKeyRotated,
    Jwks,
    TenantCreate,
    TenantCreated,
    TenantOut,
    TokenOut,
    TokenRequest,
    UserCreate,
    UserOut,
    UserUpdate,
)
from shared.caller import IdentityDep
from shared.contract import CACHE_CONTROL, JWKS_PATH, NO_STORE
from shared.pagination import Page, PageDep
from shared.problem_docs import route_responses

router = APIRouter()

# Public keys change seldom, and verifiers fetch them again on an unknown kid.
JWKS_CACHE_CONTROL = "public, max-age=60"


@router.get(JWKS_PATH, response_model=Jwks)
async def jwks(issuer: IssuerDep, response: Response, _: IdentityDep) -> dict[str, Any]:
    """The public keys access tokens are signed with (RFC 7517): the current one, the next one and
    those whose tokens may still be alive. Empty with HS256."""
    response.headers[CACHE_CONTROL] = JWKS_CACHE_CONTROL
    return issuer.jwks()


@router.post("/tenants", status_code=201, responses=route_responses(CREATE_TENANT_ERRORS))
async def create_tenant(
    data: TenantCreate, repo: UsersDep, hasher: HasherDep, settings: SettingsDep, _: IdentityDep
) -> TenantCreated:
    """Sign-up, on one of the plans `USERS_SIGNUP_PLANS` lists (403 `PLAN_NOT_SELF_SERVICE` with
    `allowed_plans` otherwise)."""
    tenant, admin = await service.bootstrap_tenant(repo, hasher, data, settings.signup_plans)
    return TenantCreated(tenant=TenantOut.model_validate(tenant), user=await service.user_out(repo, settings, admin))


# The OAuth2 password grant is a form (RFC 6749, 4.3.2); multipart is a form too, and FastAPI reads it.
FORM_MEDIA_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


async def form_body(request: Request, _: IdentityDep) -> None:
    """Refuses a body that is no form (JSON, most often) with 415 saying what the route takes. Checked
    before the form's fields (those of a JSON body would all be missing), after the caller's identity
    (around the gateway, 401 comes first). No body at all, whatever its Content-Type says (an HTTP
    client may label an empty body `application/octet-stream`), is no other format: its 422 names
    the missing fields."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    # Not a form, so not read yet; bounded by the body size limit (shared/middleware.py).
    if media_type not in FORM_MEDIA_TYPES and await request.body():
        raise TokenFormRequired(
            "This route takes application/x-www-form-urlencoded with the fields username (the email) and "
            f"password, the OAuth2 password form, not {media_type or 'a body without a Content-Type'}."
        )


@router.post(
    "/auth/token",
    dependencies=[Depends(form_body)],
    responses=route_responses(ISSUE_TOKEN_ERRORS),
)
async def token(
    form: Annotated[TokenRequest, Form()],
    repo: UsersDep,
    hasher: HasherDep,
    throttle: ThrottleDep,
    issuer: IssuerDep,
    response: Response,
    _: IdentityDep,
) -> TokenOut:
    response.headers[CACHE_CONTROL] = NO_STORE
    return await service.issue_token(repo, hasher, throttle, issuer, form.username, form.password)


@router.post("/users", status_code=201, responses=route_responses(CREATE_USER_ERRORS))
async def create_user(
    data: UserCreate, repo: UsersDep, keys: KeysDep, hasher: HasherDep, settings: SettingsDep, caller: UsersWrite
) -> UserOut:
    return await service.user_out(repo, settings, await service.create_user(repo, keys, hasher, caller, data))


@router.get("/users/me", responses=route_responses(ME_ERRORS))
async def me(repo: UsersDep, keys: KeysDep, settings: SettingsDep, caller: TenantCaller) -> UserOut:
    return await service.user_out(repo, settings, await service.get_me(repo, keys, caller))


@router.get("/users/{user_id}", responses=route_responses(GET_USER_ERRORS))
async def get_user(user_id: str, repo: UsersDep, settings: SettingsDep, caller: UsersRead) -> UserOut:
    return await service.user_out(repo, settings, await service.get_user(repo, caller.tenant_id, user_id))


@router.patch("/users/{user_id}", responses=route_responses(UPDATE_USER_ERRORS))
async def update_user(
    user_id: str, data: UserUpdate, repo: UsersDep, keys: KeysDep, settings: SettingsDep, caller: UsersWrite
) -> UserOut:
    """An admin sets a user's credit limit (`null`: back to the plan's default): an admin's token
    only, never an API key (403 `USER_REQUIRED`) nor a user who is no longer an admin (403)."""
    return await service.user_out(repo, settings, await service.update_user(repo, keys, caller, user_id, data))


@router.post("/api-keys", status_code=201, responses=route_responses(CREATE_API_KEY_ERRORS))
async def create_api_key(
    data: ApiKeyCreate, repo: UsersDep, keys: KeysDep, caller: KeyManager, response: Response
) -> ApiKeyCreated:
    response.headers[CACHE_CONTROL] = NO_STORE
    key, raw = await service.create_api_key(repo, keys, caller, data)
    return service.api_key_created(key, raw)


@router.get("/api-keys", responses=route_responses(LIST_API_KEYS_ERRORS))
async def list_api_keys(repo: UsersDep, keys: KeysDep, caller: KeyManager, page: PageDep) -> Page[ApiKeyOut]:
    return await service.list_api_keys(repo, keys, caller, page)


@router.delete("/api-keys/{key_id}", status_code=204, responses=route_responses(REVOKE_API_KEY_ERRORS))
async def revoke_api_key(key_id: str, repo: UsersDep, keys: KeysDep, caller: KeyManager) -> Response:
    await service.revoke_api_key(repo, keys, caller, key_id)
    return Response(status_code=204)


@router.post("/api-keys/{key_id}/rotate", status_code=201, responses=route_responses(ROTATE_API_KEY_ERRORS))
async def rotate_api_key(
    key_id: str,
    repo: UsersDep,
    keys: KeysDep,
    caller: KeyManager,
    settings: SettingsDep,
    response: Response,
    data: Annotated[ApiKeyRotate | None, Body()] = None,
) -> ApiKeyRotated:
    response.headers[CACHE_CONTROL] = NO_STORE
    grace = data.grace_seconds if data is not None else None
    new, raw, old = await service.rotate_api_key(
        repo, keys, caller, key_id, settings.api_key_rotation_grace_seconds if grace is None else grace
    )
    return ApiKeyRotated(**service.api_key_created(new, raw).model_dump(), previous=service.api_key_out(old))


@router.post("/api-keys/resolve", responses=route_responses(RESOLVE_API_KEY_ERRORS))
async def resolve_api_key(data: ApiKeyResolve, keys: KeysDep, _: IdentityDep) -> ApiKeyResolved:
    """For the gateway: the identity behind a key, by the key's SHA-256 (the key itself never travels)."""
    return await service.resolve_api_key(keys, data.key_hash)
