"""API keys: proxied to the users service, which owns them.

Keys are managed with a user's access token (a key cannot mint keys); the scopes of a new key may
not exceed its creator's. The raw key is in the creation and rotation answers only, sent with
`Cache-Control: no-store`. Revoking or rotating a key here makes this gateway process forget it at
once; other processes follow within `GATEWAY_API_KEY_CACHE_TTL_SECONDS`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.auth import Principal
from gateway.edge.apikeys import ApiKeyResolver
from gateway.proxy import ResourceId, UpstreamsDep
from shared.errors import Conflict, Forbidden, NotFound

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"], responses=Forbidden.openapi_response())

NO_STORE = "no-store"


def _forget(request: Request, key_id: str) -> None:
    resolver: ApiKeyResolver = request.state.api_keys
    resolver.forget(key_id)


@router.post("", status_code=201, summary="Create an API key (the key is in this answer only)")
async def create_api_key(request: Request, upstreams: UpstreamsDep, identity: Principal) -> Response:
    response = await upstreams.forward(request, "users", "/api-keys", identity)
    response.headers["Cache-Control"] = NO_STORE
    return response


@router.get("", summary="The API keys the caller may manage, newest first (`limit`, `cursor`); never the keys")
async def list_api_keys(request: Request, upstreams: UpstreamsDep, identity: Principal) -> Response:
    return await upstreams.forward(request, "users", "/api-keys", identity)


@router.delete("/{key_id}", status_code=204, summary="Revoke an API key", responses=NotFound.openapi_response())
async def revoke_api_key(
    key_id: ResourceId, request: Request, upstreams: UpstreamsDep, identity: Principal
) -> Response:
    response = await upstreams.forward(request, "users", f"/api-keys/{key_id}", identity)
    if response.status_code == 204:
        _forget(request, key_id)
    return response


@router.post(
    "/{key_id}/rotate",
    status_code=201,
    summary="Replace an API key; the old one keeps working for a grace period (`grace_seconds`)",
    responses={**NotFound.openapi_response(), **Conflict.openapi_response()},
)
async def rotate_api_key(
    key_id: ResourceId, request: Request, upstreams: UpstreamsDep, identity: Principal
) -> Response:
    response = await upstreams.forward(request, "users", f"/api-keys/{key_id}/rotate", identity)
    response.headers["Cache-Control"] = NO_STORE
    if response.status_code == 201:
        _forget(request, key_id)
    return response
