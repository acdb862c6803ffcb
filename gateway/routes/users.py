"""Tenants, tokens and users: proxied to the users service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.auth import AnyCaller, Principal, RequireScope
from gateway.proxy import ResourceId, UpstreamsDep
from shared.contract import ANONYMOUS, Identity

router = APIRouter(prefix="/v1", tags=["users"])


@router.post("/tenants", status_code=201, summary="Create a tenant and its first admin user")
async def create_tenant(request: Request, upstreams: UpstreamsDep, _: AnyCaller) -> Response:
    return await upstreams.forward(request, "users", "/tenants", ANONYMOUS)


@router.post("/auth/token", summary="Exchange email and password for an access token (OAuth2 password form)")
async def issue_token(request: Request, upstreams: UpstreamsDep, _: AnyCaller) -> Response:
    response = await upstreams.forward(request, "users", "/auth/token", ANONYMOUS)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/users", status_code=201, summary="Create a user in the caller's tenant (admin)")
async def create_user(
    request: Request, upstreams: UpstreamsDep, identity: Annotated[Identity, Depends(RequireScope("users:write"))]
) -> Response:
    return await upstreams.forward(request, "users", "/users", identity)


@router.get("/users/me", summary="The calling user")
async def me(request: Request, upstreams: UpstreamsDep, identity: Principal) -> Response:
    return await upstreams.forward(request, "users", "/users/me", identity)


@router.get("/users/{user_id}", summary="A user of the caller's tenant")
async def get_user(
    user_id: ResourceId,
    request: Request,
    upstreams: UpstreamsDep,
    identity: Annotated[Identity, Depends(RequireScope("users:read"))],
) -> Response:
    return await upstreams.forward(request, "users", f"/users/{user_id}", identity)
