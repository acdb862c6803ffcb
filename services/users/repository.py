"""All SQL of the users service."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, or_, select, update

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
        """Ends the transaction so far (reads, and a login attempt's count), so its connection goes
        back to the pool before slow work that needs none (password hashing); the next statement
        takes one again."""
        await self.session.commit()

    # A login attempt is counted before its password is checked (`service.issue_token`): as a wrong
    # one until it proves good, so that attempts made at once are checked no faster than one after
    # another. The count takes the user's row (PostgreSQL) or the database (SQLite) for writing until
    # the transaction ends, which puts concurrent attempts in a line: each sees the pause the ones
    # before it began.

    async def count_login_attempt(self, user_id: str, now: datetime) -> int | None:
        """Counts an attempt unless the account is paused at `now`; answers the count (None: paused,
        nothing counted)."""
        count = await self.session.scalar(
            update(User)
            .where(User.id == user_id, or_(User.login_blocked_until.is_(None), User.login_blocked_until <= now))
            .values(failed_logins=User.failed_logins + 1)
            .returning(User.failed_logins)
        )
        return None if count is None else int(count)

    async def pause_logins(self, user_id: str, until: datetime) -> None:
        await self.session.execute(update(User).where(User.id == user_id).values(login_blocked_until=until))

    async def login_paused_until(self, user_id: str) -> datetime | None:
        return await self.session.scalar(select(User.login_blocked_until).where(User.id == user_id))

    async def forget_login_attempt(self, user_id: str, paused_until: datetime | None) -> None:
        """Takes back an attempt whose password was never checked, and the pause it began, if no later
        attempt has begun another since."""
        await self.session.execute(
            update(User).where(User.id == user_id, User.failed_logins > 0).values(failed_logins=User.failed_logins - 1)
        )
        if paused_until is not None:
            await self.session.execute(
                update(User)
                .where(User.id == user_id, User.login_blocked_until == paused_until)
                .values(login_blocked_until=None)
            )

    async def good_login(self, user_id: str, counted: int) -> None:
        """A good password: the wrong ones before it, and itself (`counted` in all), are forgotten, and
        the pause with them; attempts counted while it was being checked still count."""
        remaining = case((User.failed_logins > counted, User.failed_logins - counted), else_=0)
        await self.session.execute(
            update(User)
            .where(User.id == user_id)
            .values(
                failed_logins=remaining,
                login_blocked_until=case((User.failed_logins > counted, User.login_blocked_until), else_=None),
            )
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
