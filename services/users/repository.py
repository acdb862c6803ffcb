"""All SQL of the users service."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update

from services.users.models import ApiKey, Tenant, User
from shared.errors import Conflict
from shared.repository import Repository


class EmailTaken(Conflict, code="EMAIL_TAKEN", title="Email already registered"): ...


class UserRepository(Repository):
    async def add_tenant_with_admin(self, tenant: Tenant, admin: User) -> None:
        self.session.add(tenant)
        await self.session.flush()
        await self.add_user(admin)

    async def add_user(self, user: User) -> None:
        self.session.add(user)
        await self.flush_unique(
            EmailTaken(
                f"The email {user.email} is already registered.",
                errors=[{"field": "email", "msg": "already registered"}],
            )
        )

    async def get_user_by_email(self, email: str) -> User | None:
        return await self.session.scalar(select(User).where(User.email == email))

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        return await self.session.get(Tenant, tenant_id)


class ApiKeyRepository(Repository):
    async def resolve(self, key_hash: str) -> tuple[ApiKey, Tenant, User] | None:
        row = (
            await self.session.execute(
                select(ApiKey, Tenant, User)
                .join(Tenant, Tenant.id == ApiKey.tenant_id)
                .join(User, User.id == ApiKey.created_by)
                .where(ApiKey.key_hash == key_hash)
            )
        ).one_or_none()
        return None if row is None else (row[0], row[1], row[2])

    async def touch(self, key_id: str, when: datetime) -> None:
        await self.session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=when))
