"""The one rule for every principal or credential that is created or changed (users, their roles, API
keys, key rotations): **no caller can create or grant more authority than it holds itself.**

Authority is a set of names: the API scopes of the contract, plus what a role can do that no scope
names. A user can manage their own API keys (`api-keys:own`); an admin every key of the tenant
(`api-keys:tenant`) and sets users' credit limits (`users:credit-limits`). An API key holds its
scopes and nothing else: it can mint no key, and no user, whose authority would outlive the key's
revocation. So a key with `users:write` creates nobody (a member alone holds scopes the key lacks,
and manages keys), sets no credit limit, and only an admin creates an admin.

What a caller holds is read afresh from the database, not taken from its token: a token's scopes cut
down to its user's role today; a key's scopes cut down to its creator's role today, and nothing once
it is revoked or expired.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.users.errors import ScopeNotHeld
from services.users.models import ApiKey, User
from services.users.repository import ApiKeyRepository, UserRepository
from shared.contract import ALL_SCOPES, ROLE_SCOPES, InsufficientScope, TenantIdentity, key_id_of
from shared.db import utcnow

MANAGE_OWN_KEYS = "api-keys:own"
MANAGE_TENANT_KEYS = "api-keys:tenant"
SET_CREDIT_LIMITS = "users:credit-limits"
ROLE_CAPABILITIES: dict[str, frozenset[str]] = {
    "admin": frozenset({MANAGE_OWN_KEYS, MANAGE_TENANT_KEYS, SET_CREDIT_LIMITS}),
    "member": frozenset({MANAGE_OWN_KEYS}),
}


def role_authority(role: str) -> frozenset[str]:
    """Everything a user of `role` holds: the role's scopes and what it may do beyond them."""
    return ROLE_SCOPES.get(role, frozenset()) | ROLE_CAPABILITIES.get(role, frozenset())


def key_authority(scopes: Iterable[str], creator_role: str) -> frozenset[str]:
    """What a key holds: its scopes that its creator's role still holds."""
    return frozenset(scopes) & ROLE_SCOPES.get(creator_role, frozenset())


async def held_by(users: UserRepository, keys: ApiKeyRepository, identity: TenantIdentity) -> frozenset[str]:
    """The authority `identity` holds now (empty for a user or key that no longer exists or works)."""
    key_id = key_id_of(identity.subject)
    if key_id is None:
        user = await users.get(User, identity.tenant_id, identity.subject)
        if user is None:
            return frozenset()
        # The token's scopes, as far as the role still holds them; the role's capabilities as they are today.
        return (identity.scopes & ROLE_SCOPES.get(user.role, frozenset())) | (role_authority(user.role) - ALL_SCOPES)
    key = await keys.get(ApiKey, identity.tenant_id, key_id)
    if key is None or key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= utcnow()):
        return frozenset()
    creator = await users.get(User, identity.tenant_id, key.created_by)
    if creator is None:
        return frozenset()
    return identity.scopes & key_authority(key.scope_set, creator.role)


def ensure_holds(held: frozenset[str], scope: str) -> None:
    """403 INSUFFICIENT_SCOPE unless `held` (read afresh) still has `scope`, whatever the token says."""
    if scope not in held:
        raise InsufficientScope(f"Missing scope {scope}.", extra={"required_scope": scope})


def ensure_grantable(held: frozenset[str], granted: frozenset[str], what: str) -> None:
    """403 SCOPE_NOT_HELD, naming what is missing, unless `granted` is within `held`."""
    missing = sorted(granted - held)
    if missing:
        raise ScopeNotHeld(
            f"A caller cannot grant more authority than it holds: {what} would hold {', '.join(missing)}.",
            extra={"missing_scopes": missing},
        )
