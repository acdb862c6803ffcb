"""API keys: forwarded to the users service, which owns them.

Keys are managed with a user's access token (a key cannot mint keys); the scopes of a new key may
not exceed its creator's. The raw key is in the creation and rotation answers only, which the edge
sends with `Cache-Control: no-store` (their rows say `secret`). Revoking or rotating a key
here makes this gateway process forget it at once; other processes follow within
`GATEWAY_API_KEY_CACHE_TTL_SECONDS`.
"""

from __future__ import annotations

from gateway.edge.access import USER_TOKEN
from gateway.routes.forward import Forward, ForwardRouter
from services.users.errors import (
    CREATE_API_KEY_ERRORS,
    LIST_API_KEYS_ERRORS,
    REVOKE_API_KEY_ERRORS,
    ROTATE_API_KEY_ERRORS,
)
from services.users.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, ApiKeyRotate, ApiKeyRotated
from shared.pagination import Page

router = ForwardRouter(
    "users",
    prefix="/v1/api-keys",
    tags=["api keys"],
    upstream_prefix="/api-keys",
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
        errors=CREATE_API_KEY_ERRORS,
        secret=True,
        description=(
            "Creates an API key for the caller's tenant with some of the caller's own scopes (403 "
            "`SCOPE_NOT_HELD` for one the caller lacks). The key (`sk_...`) is in this answer only, sent "
            "with `Cache-Control: no-store`: keep it; send it as `X-API-Key`. Needs a user's access token: "
            "a key cannot create keys (403 `USER_REQUIRED`)."
        ),
    ),
    Forward(
        "GET",
        "",
        USER_TOKEN,
        "list_api_keys",
        "The API keys the caller may manage, newest first; never the keys",
        answer=Page[ApiKeyOut],
        errors=LIST_API_KEYS_ERRORS,
        description=(
            "The tenant's API keys the caller may manage, newest first, a page at a time: their names, "
            "scopes, last four characters (`hint`), last use and expiry; never a key itself."
        ),
    ),
    Forward(
        "DELETE",
        "/{key_id}",
        USER_TOKEN,
        "revoke_api_key",
        "Revoke an API key",
        204,
        errors=REVOKE_API_KEY_ERRORS,
        forget_key_on=204,
        description=(
            "Revokes a key at once: this gateway stops accepting it immediately, the others within the key "
            "cache's TTL. Its rotated-out predecessor, if still in its grace period, is not affected."
        ),
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
        errors=ROTATE_API_KEY_ERRORS,
        description=(
            "Issues a new key with the same name and scopes and retires the old one after `grace_seconds` "
            "(the service's default when the body is left out), so clients can switch without downtime. The "
            "new key is in this answer only. A revoked, expired or already rotated key is 409 "
            "`API_KEY_NOT_ROTATABLE`."
        ),
        forget_key_on=201,
        secret=True,
    ),
)
