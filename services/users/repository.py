"""All SQL of the users service."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.users.models import Tenant, User
from shared.errors import Conflict


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
