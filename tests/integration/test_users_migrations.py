"""The users service's migrations on PostgreSQL and SQLite: head is exactly what the models say, and
the login-hardening columns come and go keeping the users that were there."""

from __future__ import annotations

import asyncio

from alembic import command

from services.users.models import Base as UsersBase
from shared.migrations import alembic_config, upgrade
from tests.integration.test_migrations import ROOT, differences, empty_url, query

USERS_DIR = ROOT / "services" / "users"

__all__ = ["empty_url"]  # the fixture: an empty PostgreSQL or SQLite database


async def test_users_head_is_what_the_models_say(empty_url):
    await asyncio.to_thread(upgrade, USERS_DIR, empty_url)
    assert await differences(empty_url, UsersBase) == []


async def test_0004_auth_hardening_up_and_down_keeps_the_users(empty_url):
    await asyncio.to_thread(upgrade, USERS_DIR, empty_url, "0003_credit_limit")
    await query(empty_url, "INSERT INTO tenants (id, name, plan, created_at) VALUES ('t', 'T', 'pro', '2026-01-01')")
    await query(
        empty_url,
        "INSERT INTO users (id, tenant_id, email, password_hash, role, created_at) "
        "VALUES ('u', 't', 'u@example.com', 'h', 'admin', '2026-01-01')",
    )
    await asyncio.to_thread(upgrade, USERS_DIR, empty_url, "0004_auth_hardening")
    assert await query(empty_url, "SELECT id, failed_logins, login_blocked_until FROM users") == [("u", 0, None)]
    await asyncio.to_thread(command.downgrade, alembic_config(USERS_DIR, empty_url), "0003_credit_limit")
    assert await query(empty_url, "SELECT id, email FROM users") == [("u", "u@example.com")]
