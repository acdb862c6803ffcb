"""All SQL of the users service."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update

from services.users.errors import EmailTaken
from services.users.models import ApiKey, SigningKey, Tenant, User
from shared.repository import Repository


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

    async def get_tenant(self, tenant_id: str, *, lock: bool = False) -> Tenant | None:
        return await self.session.get(Tenant, tenant_id, with_for_update=lock)

    async def release(self) -> None:
        """Ends the transaction so far, which has only read, so its connection goes back to the pool
        before slow work that needs none (password hashing); the next statement takes one again."""
        await self.session.commit()

    async def count_failed_login(self, user_id: str) -> int:
        """One more wrong password, counted atomically; answers the count."""
        count = await self.session.scalar(
            update(User)
            .where(User.id == user_id)
            .values(failed_logins=User.failed_logins + 1)
            .returning(User.failed_logins)
        )
        return int(count or 0)

    async def block_logins(self, user_id: str, until: datetime | None) -> None:
        await self.session.execute(update(User).where(User.id == user_id).values(login_blocked_until=until))

    async def reset_failed_logins(self, user_id: str) -> None:
        await self.session.execute(
            update(User).where(User.id == user_id).values(failed_logins=0, login_blocked_until=None)
        )


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


class SigningKeyRepository(Repository):
    async def newest(self, limit: int) -> list[SigningKey]:
        rows = await self.session.scalars(select(SigningKey).order_by(SigningKey.generation.desc()).limit(limit))
        return list(rows)
