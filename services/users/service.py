"""Rules of the users service."""

from __future__ import annotations

from services.users.models import Tenant, User, new_id
from services.users.repository import UserRepository
from services.users.schemas import TenantCreate, TokenOut, UserCreate
from services.users.security import TokenIssuer, hash_password, verify_password
from shared.errors import NotFound, Unauthorized
from shared.scopes import ROLE_SCOPES


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
