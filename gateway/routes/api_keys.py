"""API keys: forwarded to the users service, which owns them.

Keys are managed with a user's access token (a key cannot mint keys); the scopes of a new key may
not exceed its creator's. The raw key is in the creation and rotation answers only, which the edge
sends with `Cache-Control: no-store` (their rows say `secret`). Revoking or rotating a key
here makes this gateway process forget it at once; other processes follow within
`GATEWAY_API_KEY_CACHE_TTL_SECONDS`.
"""

from __future__ import annotations

from gateway.edge.access import USER_TOKEN
from gateway.routes.forward import PAGE_QUERY, Forward, ForwardRouter
from services.users.errors import ApiKeyNotFound, ApiKeyNotRotatable, ScopeNotHeld, UserRequired
from services.users.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, ApiKeyRotate, ApiKeyRotated
from shared.pagination import Page

router = ForwardRouter(
    "users",
    prefix="/v1/api-keys",
    tags=["api keys"],
    upstream_prefix="/api-keys",
    # Keys are managed with a user's token: the users service answers 403 USER_REQUIRED to a key.
    errors=[UserRequired],
)

router.add(
    Forward(
        "POST",
        "",
        USER_TOKEN,
        "create_api_key",
        "Create an API key (the key is in this answer only)",
        201,
        body=ApiKeyCreate,
        answer=ApiKeyCreated,
        errors=[ScopeNotHeld],
        secret=True,
    ),
    Forward(
        "GET",
        "",
        USER_TOKEN,
        "list_api_keys",
        "The API keys the caller may manage, newest first; never the keys",
        query=PAGE_QUERY,
        answer=Page[ApiKeyOut],
    ),
    Forward(
        "DELETE",
        "/{key_id}",
        USER_TOKEN,
        "revoke_api_key",
        "Revoke an API key",
        204,
        errors=[ApiKeyNotFound],
        forget_key_on=204,
    ),
    Forward(
        "POST",
        "/{key_id}/rotate",
        USER_TOKEN,
        "rotate_api_key",
        "Replace an API key; the old one keeps working for a grace period (`grace_seconds`)",
        201,
        body=ApiKeyRotate,
        body_required=False,
        answer=ApiKeyRotated,
        errors=[ApiKeyNotFound, ApiKeyNotRotatable],
        forget_key_on=201,
        secret=True,
    ),
)
