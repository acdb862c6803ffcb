"""Rules of the users service. Every function runs in the request's transaction (the repositories
it is given share the request's session) and takes callers as the route's dependencies checked them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.users.authority import (
    MANAGE_TENANT_KEYS,
    SET_CREDIT_LIMITS,
    ensure_grantable,
    ensure_holds,
    held_by,
    key_authority,
    role_authority,
)
from services.users.emails import canonical_email_or_none
from services.users.errors import (
    ApiKeyNotFound,
    ApiKeyNotRotatable,
    InvalidCredentials,
    LoginThrottled,
    PlanNotSelfService,
    TenantNotFound,
    UserNotFound,
    UserRequired,
)
from services.users.models import ApiKey, Tenant, User
from services.users.repository import ApiKeyRepository, UserRepository
from services.users.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    ApiKeyResolved,
    TenantCreate,
    TokenOut,
    UserCreate,
    UserOut,
    UserUpdate,
)
from services.users.security import LoginThrottle, PasswordHasher, TokenIssuer
from services.users.settings import UsersSettings
from shared.contract import (
    DEFAULT_PLAN,
    ROLE_SCOPES,
    USERS_WRITE,
    Plan,
    TenantIdentity,
    hash_api_key,
    key_id_of,
    new_api_key,
)
from shared.db import new_id, utcnow
from shared.errors import retry_in
from shared.pagination import Page, PageQuery
from shared.repository import matching


def api_key_out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut.model_validate(key)


def api_key_created(key: ApiKey, raw: str) -> ApiKeyCreated:
    return ApiKeyCreated(**api_key_out(key).model_dump(), api_key=raw)


async def bootstrap_tenant(
    repo: UserRepository, hasher: PasswordHasher, data: TenantCreate, signup_plans: Sequence[str]
) -> tuple[Tenant, User]:
    """Creates a tenant and its first admin in one transaction (the password is hashed before it
    starts, so no connection is held meanwhile). Anyone may sign up, so only on `signup_plans`: a
    plan beyond them is an operator's to give (`change_plan`), and is refused before any work."""
    if data.plan not in signup_plans:
        raise PlanNotSelfService(
            f"The {data.plan} plan is not available at sign-up; choose {' or '.join(signup_plans)}. "
            "Another plan is given to an existing tenant by the operator.",
            extra={"allowed_plans": list(signup_plans)},
        )
    tenant = Tenant(id=new_id(), name=data.name, plan=data.plan)
    admin = User(
        tenant_id=tenant.id,
        email=data.admin_email,
        password_hash=await hasher.hash(data.admin_password),
        role="admin",
    )
    await repo.add_tenant_with_admin(tenant, admin)
    return tenant, admin


async def _locked_tenant(repo: UserRepository, tenant_id: str) -> Tenant:
    """The tenant, locked for an operator's change until the transaction ends (404 when there is none)."""
    tenant = await repo.get_tenant(tenant_id, lock=True)
    if tenant is None:
        raise TenantNotFound.for_id(tenant_id)
    return tenant


async def change_plan(repo: UserRepository, tenant_id: str, plan: Plan) -> tuple[Tenant, str]:
    """An operator puts a tenant on `plan`; answers the tenant and the plan it had. The users service
    reads the plan afresh (credit limits at once); tokens carry the plan they were issued with."""
    tenant = await _locked_tenant(repo, tenant_id)
    previous = tenant.plan
    tenant.plan = plan
    await repo.save()
    return tenant, previous


async def change_quota(repo: UserRepository, tenant_id: str, quota: int | None) -> tuple[Tenant, int | None]:
    """An operator gives a tenant its own monthly request quota (None: back to its plan's); answers the
    tenant and the quota it had. Tokens and the gateway's API-key cache carry it as they carry the plan."""
    tenant = await _locked_tenant(repo, tenant_id)
    previous = tenant.monthly_quota
    tenant.monthly_quota = quota
    await repo.save()
    return tenant, previous


async def create_user(
    repo: UserRepository, keys: ApiKeyRepository, hasher: PasswordHasher, identity: TenantIdentity, data: UserCreate
) -> User:
    """A user of the caller's tenant, holding no more than the caller does (`authority.py`)."""
    held = await held_by(repo, keys, identity)
    ensure_holds(held, USERS_WRITE)
    ensure_grantable(held, role_authority(data.role), f"a user with the {data.role} role")
    # Nothing written yet: the connection goes back to the pool while the password is hashed.
    await repo.release()
    user = User(
        tenant_id=identity.tenant_id,
        email=data.email,
        password_hash=await hasher.hash(data.password),
        role=data.role,
    )
    await repo.add_user(user)
    return user


async def get_me(repo: UserRepository, keys: ApiKeyRepository, identity: TenantIdentity) -> User:
    """The calling user; for an API key, the user who created it."""
    key_id = key_id_of(identity.subject)
    if key_id is None:
        return await get_user(repo, identity.tenant_id, identity.subject)
    key = await keys.one(ApiKey, identity.tenant_id, key_id, ApiKeyNotFound)
    return await get_user(repo, identity.tenant_id, key.created_by)


async def get_user(repo: UserRepository, tenant_id: str, user_id: str) -> User:
    """Another tenant's user answers exactly as a missing one does."""
    return await repo.one(User, tenant_id, user_id, UserNotFound)


async def user_out(repo: UserRepository, settings: UsersSettings, user: User) -> UserOut:
    """The user as routes answer it, with the credit limit in force."""
    limit = user.credit_limit_cents
    if limit is None:
        tenant = await repo.get_tenant(user.tenant_id)
        limit = settings.credit_limit_of(tenant.plan if tenant is not None else DEFAULT_PLAN)
    return UserOut.model_validate(
        {
            "id": user.id,
            "email": user.email,
            "role": user.role,
            "tenant_id": user.tenant_id,
            "created_at": user.created_at,
            "credit_limit_cents": limit,
            "credit_limit_custom": user.credit_limit_cents is not None,
        }
    )


async def update_user(
    repo: UserRepository, keys: ApiKeyRepository, identity: TenantIdentity, user_id: str, data: UserUpdate
) -> User:
    """An admin's change to a user of the tenant (only what the body names changes). The caller must be
    a user, not a key, and an admin today (`authority.py`: read afresh, so a demoted admin's token
    still carrying `users:write` is refused)."""
    if key_id_of(identity.subject) is not None:
        raise UserRequired("Credit limits are set with an admin's access token, not with an API key.")
    held = await held_by(repo, keys, identity)
    ensure_holds(held, USERS_WRITE)
    ensure_holds(held, SET_CREDIT_LIMITS)
    user = await get_user(repo, identity.tenant_id, user_id)
    if "credit_limit_cents" in data.model_fields_set:
        user.credit_limit_cents = data.credit_limit_cents
        await repo.save()
    return user


async def issue_token(
    repo: UserRepository,
    hasher: PasswordHasher,
    throttle: LoginThrottle,
    issuer: TokenIssuer,
    email: str,
    password: str,
) -> TokenOut:
    """An access token for a good email and password. The email is put in canonical form as sign-up
    put it (`emails.py`); a name that is no valid address finds no account and answers the same 401.

    The user and tenant are read, then the connection goes back to the pool before the password is
    verified (in a thread, bounded by the hasher), so logins never hold connections the other routes
    need. An account past its free wrong passwords answers 429 `LOGIN_THROTTLED` until its delay ends,
    without verifying anything (`LoginThrottle`). The attempt is counted as a wrong password before its
    password is checked, and the pause its failure would begin starts then, so attempts made at once
    are checked no faster than one after another; a good password takes them back, and one never
    checked (the hashing refused or failed) is taken back."""
    canonical = canonical_email_or_none(email)
    user = await repo.get_user_by_email(canonical) if canonical is not None else None
    tenant = await repo.get_tenant(user.tenant_id) if user is not None else None
    attempt = await _count_attempt(repo, throttle, hasher, user) if user is not None else None
    # Commits the count: it stands however the request ends, unless taken back below.
    await repo.release()
    try:
        good = await hasher.verify(password, user.password_hash if user else None)
    except Exception:
        if user is not None and attempt is not None:
            await repo.forget_login_attempt(user.id, attempt.paused_until)
            await repo.release()
        raise
    if not good or user is None or tenant is None or attempt is None:
        hasher.metrics.logins.labels("wrong_password").inc()
        raise InvalidCredentials("The email or password is wrong.")
    await repo.good_login(user.id, attempt.count)
    hasher.metrics.logins.labels("ok").inc()
    token = issuer.issue(
        subject=user.id,
        tenant_id=tenant.id,
        scopes=ROLE_SCOPES[user.role],
        plan=tenant.plan,
        role=user.role,
        quota=tenant.monthly_quota,
    )
    return TokenOut(access_token=token, expires_in=issuer.ttl)


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """A login attempt as counted before its password is checked: the account's count with it, and the
    pause its failure begins (None within the free ones)."""

    count: int
    paused_until: datetime | None


async def _count_attempt(
    repo: UserRepository, throttle: LoginThrottle, hasher: PasswordHasher, user: User
) -> LoginAttempt:
    """Counts an attempt at `user`'s password, or answers 429 while the account is paused. A pause the
    row read already shows costs no write; one begun meanwhile shows in the count's condition."""
    now = utcnow()
    paused = user.login_blocked_until if user.login_blocked_until and user.login_blocked_until > now else None
    count = None if paused is not None else await repo.count_login_attempt(user.id, now)
    if count is None:
        paused = paused or await repo.login_paused_until(user.id)
        wait = max(1, math.ceil((paused - now).total_seconds())) if paused is not None else 1
        hasher.metrics.logins.labels("throttled").inc()
        raise LoginThrottled(
            f"Too many wrong passwords for this account; try again in {wait} s.",
            headers=retry_in(wait),
            extra={"retry_after": wait},
        )
    until = throttle.blocked_until(count, now)
    if until is not None:
        await repo.pause_logins(user.id, until)
    return LoginAttempt(count, until)


async def _manages_tenant_keys(users: UserRepository, keys: ApiKeyRepository, identity: TenantIdentity) -> bool:
    """Whether the user manages every key of the tenant (an admin now: the role is read afresh, never
    taken from the token, which an admin demoted since still holds)."""
    return MANAGE_TENANT_KEYS in await held_by(users, keys, identity)


async def _manageable(users: UserRepository, keys: ApiKeyRepository, identity: TenantIdentity, key_id: str) -> ApiKey:
    """The key, locked. Admins manage every key of their tenant; other users only their own. Another
    user's key answers exactly as a missing one does."""
    key = await keys.get(ApiKey, identity.tenant_id, key_id, lock=True)
    if key is None or (key.created_by != identity.subject and not await _manages_tenant_keys(users, keys, identity)):
        raise ApiKeyNotFound.for_id(key_id)
    return key


def _new_key(raw: str, tenant_id: str, created_by: str, name: str, scopes: str, created_at: datetime) -> ApiKey:
    return ApiKey(
        id=new_id(),
        tenant_id=tenant_id,
        created_by=created_by,
        name=name,
        key_hash=hash_api_key(raw),
        hint=raw[-4:],
        scopes=scopes,
        created_at=created_at,
    )


async def create_api_key(
    users: UserRepository, keys: ApiKeyRepository, identity: TenantIdentity, data: ApiKeyCreate
) -> tuple[ApiKey, str]:
    """A new key, holding no more than its creator does now (`authority.py`). Answers the raw key
    once. `identity` is a user's (`KeyManager`), never a key's."""
    tenant_id = identity.tenant_id
    creator = await get_user(users, tenant_id, identity.subject)
    ensure_grantable(await held_by(users, keys, identity), frozenset(data.scopes), "the key")
    raw = new_api_key()
    key = _new_key(raw, tenant_id, creator.id, data.name, " ".join(data.scopes), utcnow())
    await keys.add(key)
    return key, raw


async def list_api_keys(
    users: UserRepository, keys: ApiKeyRepository, identity: TenantIdentity, page: PageQuery
) -> Page[ApiKeyOut]:
    """The keys a user may manage: all of the tenant's for an admin, their own for others."""
    everyone = await _manages_tenant_keys(users, keys, identity)
    mine = matching((ApiKey.created_by, None if everyone else identity.subject))
    return await keys.list_page(ApiKey, identity.tenant_id, page.position(), page.limit, api_key_out, *mine)


async def revoke_api_key(users: UserRepository, keys: ApiKeyRepository, identity: TenantIdentity, key_id: str) -> None:
    """Revoking twice is not an error: the key is revoked either way."""
    key = await _manageable(users, keys, identity, key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await keys.save()


async def rotate_api_key(
    users: UserRepository, keys: ApiKeyRepository, identity: TenantIdentity, key_id: str, grace_seconds: int
) -> tuple[ApiKey, str, ApiKey]:
    """A new key with the same name, scopes and creator; the old one works for `grace_seconds` more.
    The new key is granted the scopes the old one was given, which the caller must hold (`authority.py`):
    a creator demoted since cannot renew a key wider than what it holds now.

    Answers (new key, its raw value, old key). The old key's row is locked, so two concurrent
    rotations make one new key.
    """
    old = await _manageable(users, keys, identity, key_id)
    ensure_grantable(await held_by(users, keys, identity), old.scope_set, "the new key")
    now = utcnow()
    if old.revoked_at is not None:
        raise ApiKeyNotRotatable(f"The API key {key_id} is revoked.")
    if old.replaced_by is not None:
        raise ApiKeyNotRotatable(f"The API key {key_id} was already rotated; rotate {old.replaced_by} instead.")
    if old.expires_at is not None and old.expires_at <= now:
        raise ApiKeyNotRotatable(f"The API key {key_id} has expired.")
    raw = new_api_key()
    new = _new_key(raw, old.tenant_id, old.created_by, old.name, old.scopes, now)
    await keys.add(new)
    old.expires_at = now + timedelta(seconds=grace_seconds)
    old.replaced_by = new.id
    await keys.save()
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
        monthly_quota=tenant.monthly_quota,
        scopes=sorted(key_authority(key.scope_set, creator.role)),
        created_by=creator.id,
        expires_at=key.expires_at,
    )
