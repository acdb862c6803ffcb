"""All SQL of the users service."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.users.models import ApiKey, Tenant, User
from shared.errors import Conflict
from shared.pagination import Cursor, older_than


class EmailTaken(Conflict):
    error_code = "EMAIL_TAKEN"
    title = "Email already registered"
    slug = "email-taken"


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_tenant_with_admin(self, tenant: Tenant, admin: User) -> None:
        self.session.add(tenant)
        await self.session.flush()
        await self.add_user(admin)

    async def add_user(self, user: User) -> None:
        self.session.add(user)
        try:
            await self.session.flush()
        except IntegrityError as exc:
            await self.session.rollback()
            raise EmailTaken(
                f"The email {user.email} is already registered.",
                errors=[{"field": "email", "msg": "already registered"}],
            ) from exc

    async def get_user_by_email(self, email: str) -> User | None:
        return await self.session.scalar(select(User).where(User.email == email))

    async def get_user(self, tenant_id: str, user_id: str) -> User | None:
        return await self.session.scalar(select(User).where(User.id == user_id, User.tenant_id == tenant_id))

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        return await self.session.get(Tenant, tenant_id)


class ApiKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, key: ApiKey) -> None:
        self.session.add(key)
        await self.session.flush()

    async def get(self, tenant_id: str, key_id: str) -> ApiKey | None:
        return await self.session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant_id == tenant_id))

    async def get_for_update(self, tenant_id: str, key_id: str) -> ApiKey | None:
        """Locks the row, so two rotations of one key cannot both succeed."""
        return await self.session.scalar(
            select(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant_id == tenant_id).with_for_update()
        )

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

    async def page(self, tenant_id: str, created_by: str | None, cursor: Cursor | None, limit: int) -> list[ApiKey]:
        """Newest first; `limit + 1` rows so the caller knows whether a next page exists."""
        query = select(ApiKey).where(ApiKey.tenant_id == tenant_id)
        if created_by is not None:
            query = query.where(ApiKey.created_by == created_by)
        if cursor is not None:
            query = query.where(older_than(ApiKey.created_at, ApiKey.id, cursor))
        query = query.order_by(ApiKey.created_at.desc(), ApiKey.id.desc()).limit(limit + 1)
        return list(await self.session.scalars(query))
