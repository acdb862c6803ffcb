"""API keys: forwarded to the users service, which owns them.

Keys are managed with a user's access token (a key cannot mint keys); the scopes of a new key may
not exceed its creator's. The raw key is in the creation and rotation answers only, which the edge
sends with `Cache-Control: no-store` (`SECRET_ROUTES` in the contract). Revoking or rotating a key
here makes this gateway process forget it at once; other processes follow within
`GATEWAY_API_KEY_CACHE_TTL_SECONDS`.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.deps import Principal, gateway_state
from gateway.routes.forward import PAGE_QUERY, Forward, add_forwards
from services.users.errors import ApiKeyNotFound, ApiKeyNotRotatable, ScopeNotHeld, UserRequired
from services.users.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, ApiKeyRotate, ApiKeyRotated
from shared.pagination import Page

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])


def forget_on(status: int) -> Callable[[Request, Response], None]:
    """Drops the key from this process's cache once the users service answered `status`."""

    def forget(request: Request, response: Response) -> None:
        if response.status_code == status:
            gateway_state(request).api_keys.forget(request.path_params["key_id"])

    return forget


add_forwards(
    router,
    "users",
    [
        Forward(
            "POST",
            "",
            Principal,
            "create_api_key",
            "Create an API key (the key is in this answer only)",
            201,
            body=ApiKeyCreate,
            answer=ApiKeyCreated,
            errors=[ScopeNotHeld],
            api_key=False,
        ),
        Forward(
            "GET",
            "",
            Principal,
            "list_api_keys",
            "The API keys the caller may manage, newest first; never the keys",
            query=PAGE_QUERY,
            answer=Page[ApiKeyOut],
            api_key=False,
        ),
        Forward(
            "DELETE",
            "/{key_id}",
            Principal,
            "revoke_api_key",
            "Revoke an API key",
            204,
            errors=[ApiKeyNotFound],
            then=forget_on(204),
            api_key=False,
        ),
        Forward(
            "POST",
            "/{key_id}/rotate",
            Principal,
            "rotate_api_key",
            "Replace an API key; the old one keeps working for a grace period (`grace_seconds`)",
            201,
            body=ApiKeyRotate,
            body_required=False,
            answer=ApiKeyRotated,
            errors=[ApiKeyNotFound, ApiKeyNotRotatable],
            then=forget_on(201),
            api_key=False,
        ),
    ],
    upstream_prefix="/api-keys",
    # Keys are managed with a user's token: the users service answers 403 USER_REQUIRED to a key.
    errors=[UserRequired],
)
