"""Rules of the users service."""

from __future__ import annotations

from datetime import timedelta

from services.users.models import ApiKey, Tenant, User
from services.users.repository import ApiKeyRepository, UserRepository
from services.users.schemas import ApiKeyCreate, ApiKeyResolved, TenantCreate, TokenOut, UserCreate
from services.users.security import TokenIssuer, hash_password, verify_password
from shared.contract import ROLE_SCOPES, Identity, hash_api_key, key_id_of, new_api_key
from shared.db import new_id, utcnow
from shared.errors import Conflict, Forbidden, NotFound, Unauthorized
from shared.pagination import Cursor


class UserNotFound(NotFound):
    error_code = "USER_NOT_FOUND"
    title = "User not found"
    slug = "user-not-found"


class InvalidCredentials(Unauthorized):
    error_code = "INVALID_CREDENTIALS"
    title = "Invalid credentials"
    slug = "invalid-credentials"


async def bootstrap_tenant(repo: UserRepository, data: TenantCreate) -> tuple[Tenant, User]:
    """Creates a tenant and its first admin in one transaction."""
    tenant = Tenant(id=new_id(), name=data.name, plan=data.plan)
    admin = User(
        tenant_id=tenant.id,
        email=data.admin_email.lower(),
        password_hash=await hash_password(data.admin_password),
        role="admin",
    )
    await repo.add_tenant_with_admin(tenant, admin)
    return tenant, admin


async def create_user(repo: UserRepository, tenant_id: str, data: UserCreate) -> User:
    user = User(
        tenant_id=tenant_id,
        email=data.email.lower(),
        password_hash=await hash_password(data.password),
        role=data.role,
    )
    await repo.add_user(user)
    return user


async def get_me(repo: UserRepository, keys: ApiKeyRepository, identity: Identity) -> User:
    """The calling user; for an API key, the user who created it."""
    tenant_id = identity.require_tenant()
    key_id = key_id_of(identity.subject)
    if key_id is None:
        return await get_user(repo, tenant_id, identity.subject)
    key = await keys.get(tenant_id, key_id)
    if key is None:
        raise ApiKeyNotFound(f"No API key {key_id}.")
    return await get_user(repo, tenant_id, key.created_by)


async def get_user(repo: UserRepository, tenant_id: str, user_id: str) -> User:
    """Another tenant's user answers exactly as a missing one does."""
    user = await repo.get_user(tenant_id, user_id)
    if user is None:
        raise UserNotFound(f"No user {user_id}.")
    return user


async def issue_token(repo: UserRepository, issuer: TokenIssuer, email: str, password: str) -> TokenOut:
    user = await repo.get_user_by_email(email.strip().lower())
    if not await verify_password(password, user.password_hash if user else None) or user is None:
        raise InvalidCredentials("The email or password is wrong.")
    tenant = await repo.get_tenant(user.tenant_id)
    if tenant is None:  # pragma: no cover - the foreign key makes this impossible
        raise InvalidCredentials("The email or password is wrong.")
    token = issuer.issue(
        subject=user.id, tenant_id=tenant.id, scopes=ROLE_SCOPES[user.role], plan=tenant.plan, role=user.role
    )
    return TokenOut(access_token=token, expires_in=issuer.ttl)


class ApiKeyNotFound(NotFound):
    error_code = "API_KEY_NOT_FOUND"
    title = "API key not found"
    slug = "api-key-not-found"


class UserRequired(Forbidden):
    error_code = "USER_REQUIRED"
    title = "A user is required"
    slug = "user-required"


class ScopeNotHeld(Forbidden):
    error_code = "SCOPE_NOT_HELD"
    title = "Scope not held"
    slug = "scope-not-held"


class ApiKeyNotRotatable(Conflict):
    error_code = "API_KEY_NOT_ROTATABLE"
    title = "API key cannot be rotated"
    slug = "api-key-not-rotatable"


def _require_user(identity: Identity) -> str:
    """Keys are managed by people: a key that could mint keys would outlive its own revocation."""
    if key_id_of(identity.subject) is not None:
        raise UserRequired("API keys are managed with a user's access token, not with an API key.")
    return identity.require_tenant()


def _manageable(identity: Identity, key: ApiKey | None, key_id: str) -> ApiKey:
    """Admins manage every key of their tenant; other users only their own. Another user's key
    answers exactly as a missing one does."""
    if key is None or (identity.role != "admin" and key.created_by != identity.subject):
        raise ApiKeyNotFound(f"No API key {key_id}.")
    return key


async def create_api_key(
    users: UserRepository, keys: ApiKeyRepository, identity: Identity, data: ApiKeyCreate
) -> tuple[ApiKey, str]:
    """A new key; its scopes may not exceed what its creator holds now. Answers the raw key once."""
    tenant_id = _require_user(identity)
    creator = await get_user(users, tenant_id, identity.subject)
    held = identity.scopes & ROLE_SCOPES[creator.role]
    missing = sorted(set(data.scopes) - held)
    if missing:
        raise ScopeNotHeld(
            f"A key cannot hold scopes its creator does not: {', '.join(missing)}.", extra={"missing_scopes": missing}
        )
    raw = new_api_key()
    key = ApiKey(
        id=new_id(),
        tenant_id=tenant_id,
        created_by=creator.id,
        name=data.name,
        key_hash=hash_api_key(raw),
        hint=raw[-4:],
        scopes=" ".join(data.scopes),
        created_at=utcnow(),
    )
    await keys.add(key)
    return key, raw


async def list_api_keys(keys: ApiKeyRepository, identity: Identity, cursor: Cursor | None, limit: int) -> list[ApiKey]:
    tenant_id = _require_user(identity)
    return await keys.page(tenant_id, None if identity.role == "admin" else identity.subject, cursor, limit)


async def revoke_api_key(keys: ApiKeyRepository, identity: Identity, key_id: str) -> None:
    """Revoking twice is not an error: the key is revoked either way."""
    tenant_id = _require_user(identity)
    key = _manageable(identity, await keys.get_for_update(tenant_id, key_id), key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await keys.session.flush()


async def rotate_api_key(
    keys: ApiKeyRepository, identity: Identity, key_id: str, grace_seconds: int
) -> tuple[ApiKey, str, ApiKey]:
    """A new key with the same name, scopes and creator; the old one works for `grace_seconds` more.

    Answers (new key, its raw value, old key).
    """
    tenant_id = _require_user(identity)
    old = _manageable(identity, await keys.get_for_update(tenant_id, key_id), key_id)
    now = utcnow()
    if old.revoked_at is not None:
        raise ApiKeyNotRotatable(f"The API key {key_id} is revoked.")
    if old.replaced_by is not None:
        raise ApiKeyNotRotatable(f"The API key {key_id} was already rotated; rotate {old.replaced_by} instead.")
    if old.expires_at is not None and old.expires_at <= now:
        raise ApiKeyNotRotatable(f"The API key {key_id} has expired.")
    raw = new_api_key()
    new = ApiKey(
        id=new_id(),
        tenant_id=tenant_id,
        created_by=old.created_by,
        name=old.name,
        key_hash=hash_api_key(raw),
        hint=raw[-4:],
        scopes=old.scopes,
        created_at=now,
    )
    await keys.add(new)
    old.expires_at = now + timedelta(seconds=grace_seconds)
    old.replaced_by = new.id
    await keys.session.flush()
    return new, raw, old


async def resolve_api_key(keys: ApiKeyRepository, key_hash: str) -> ApiKeyResolved:
    """The identity behind a key's hash, for the gateway. Revoked, expired and unknown keys are all
    the same 404. The scopes are cut down to what the creator's role holds today."""
    found = await keys.resolve(key_hash)
    now = utcnow()
    if found is None:
        raise ApiKeyNotFound("No such API key.")
    key, tenant, creator = found
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
        raise ApiKeyNotFound("No such API key.")
    await keys.touch(key.id, now)
    return ApiKeyResolved(
        id=key.id,
        tenant_id=tenant.id,
        plan=tenant.plan,
        scopes=sorted(key.scope_set & ROLE_SCOPES[creator.role]),
        created_by=creator.id,
        expires_at=key.expires_at,
    )
