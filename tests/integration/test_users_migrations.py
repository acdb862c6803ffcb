"""The users service's migrations on PostgreSQL and SQLite: head is exactly what the models say, the
login-hardening columns come and go keeping the users that were there, and stored emails are put in
canonical form without ever merging two accounts."""

from __future__ import annotations

import asyncio

import pytest
from alembic import command

from services.users.emails import canonical_email
from services.users.models import Base as UsersBase
from shared.migrations import alembic_config, upgrade
from tests.integration.test_migrations import ROOT, differences, query

USERS_DIR = ROOT / "services" / "users"


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


async def _users_at_0005(url: str, emails: dict[str, str]) -> None:
    await asyncio.to_thread(upgrade, USERS_DIR, url, "0005_signing_keys")
    await query(url, "INSERT INTO tenants (id, name, plan, created_at) VALUES ('t', 'T', 'pro', '2026-01-01')")
    for user_id, email in emails.items():
        await query(
            url,
            "INSERT INTO users (id, tenant_id, email, password_hash, role, created_at) "
            f"VALUES ('{user_id}', 't', '{email}', 'h', 'member', '2026-01-01')",
        )


async def test_0006_puts_stored_emails_in_canonical_form(empty_url):
    # As the former rule stored them: NFC, lower-cased, the domain in its IDNA Unicode form.
    await _users_at_0005(
        empty_url,
        {
            "ascii": "ada@example.com",
            "sharp-s": "straße@example.com",
            "fullwidth": "\uff46\uff55\uff4c\uff4c@example.com",
            "ligature": "oﬀ@example.com",
            "idn": "josé@bücher.de",
        },
    )
    await asyncio.to_thread(upgrade, USERS_DIR, empty_url, "0006_canonical_emails")
    assert dict(await query(empty_url, "SELECT id, email FROM users")) == {
        "ascii": "ada@example.com",
        "sharp-s": "strasse@example.com",
        "fullwidth": "full@example.com",
        "ligature": "off@example.com",
        "idn": "josé@bücher.de",
    }
    # Each is what sign-up and login make of the address now.
    for user_id, email in await query(empty_url, "SELECT id, email FROM users"):
        assert canonical_email(email) == email, user_id
    await asyncio.to_thread(command.downgrade, alembic_config(USERS_DIR, empty_url), "0005_signing_keys")
    assert len(await query(empty_url, "SELECT id FROM users")) == 5


async def test_0006_stops_without_changing_anything_when_two_users_would_share_an_email(empty_url):
    before = {"a-plain": "off@example.com", "b-ligature": "oﬀ@example.com", "c-fullwidth-at": "x\uff20y@example.com"}
    await _users_at_0005(empty_url, {**before, "d-sharp-s": "straße@example.com"})
    with pytest.raises(RuntimeError) as refused:
        await asyncio.to_thread(upgrade, USERS_DIR, empty_url, "0006_canonical_emails")
    message = str(refused.value)
    assert "b-ligature (the same as a-plain)" in message
    assert "c-fullwidth-at (no valid address)" in message
    assert "d-sharp-s" not in message
    # Only ids are named: an error message is no place for addresses.
    assert "example.com" not in message
    assert dict(await query(empty_url, "SELECT id, email FROM users")) == {**before, "d-sharp-s": "straße@example.com"}
    (version,) = await query(empty_url, "SELECT version_num FROM alembic_version")
    assert version == ("0005_signing_keys",)
