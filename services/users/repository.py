"""All SQL of the users service."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select, update

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

    async def count_login_attempt(self, user_id: str, now: datetime) -> int | None:
        """Counts an attempt at the account's password before it is checked, as a wrong one until it
        proves good (`reset_failed_logins`); answers the count, or None while the account is paused
        (nothing counted). The row's write lock, held until the transaction ends, puts attempts made
        at once in a line: each sees the pause the ones before it began."""
        count = await self.session.scalar(
            update(User)
            .where(User.id == user_id, or_(User.login_blocked_until.is_(None), User.login_blocked_until <= now))
            .values(failed_logins=User.failed_logins + 1)
            .returning(User.failed_logins)
        )
        return None if count is None else int(count)

    async def forget_login_attempt(self, user_id: str) -> None:
        """Takes back an attempt counted whose password was never checked (the hashing was refused)."""
        await self.session.execute(
            update(User).where(User.id == user_id, User.failed_logins > 0).values(failed_logins=User.failed_logins - 1)
        )

    async def login_paused_until(self, user_id: str) -> datetime | None:
        return await self.session.scalar(select(User.login_blocked_until).where(User.id == user_id))

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
