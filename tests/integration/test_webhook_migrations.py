"""The webhooks migrations up and down on PostgreSQL and SQLite, with rows in the tables."""

from __future__ import annotations

import asyncio

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from services.webhooks.models import Base
from shared.migrations import alembic_config, upgrade
from tests.infra import Servers
from tests.webhook_support import WEBHOOKS_DIR, _create_pg, _drop_pg

ENDPOINTS = (
    "INSERT INTO webhook_endpoints (id, tenant_id, url, events, enabled, secret, created_at, updated_at) VALUES "
    "('off', 't', 'https://1.1.1.1/', '[]', false, 's', '2026-01-01 00:00:00+00', '2026-01-01 00:00:00+00'), "
    "('on', 't', 'https://1.1.1.1/', '[]', true, 's', '2026-01-01 00:00:00+00', '2026-01-01 00:00:00+00')"
)


async def query(url: str, sql: str) -> list:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(sql))
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


async def differences(url: str) -> list:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
                )
            )
    finally:
        await engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
async def empty_url(request, migrated: Servers, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'webhooks.db'}"
        return
    name, dsn = await _create_pg(migrated, "migrations")
    try:
        yield dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    finally:
        await _drop_pg(migrated, name)


async def test_0002_delivery_up_and_down_keeps_what_endpoints_said(empty_url):
    await asyncio.to_thread(upgrade, WEBHOOKS_DIR, empty_url, "0001")
    await query(empty_url, ENDPOINTS)
    await asyncio.to_thread(upgrade, WEBHOOKS_DIR, empty_url, "0002_delivery")
    assert await query(empty_url, "SELECT id, status FROM webhook_endpoints ORDER BY id") == [
        ("off", "disabled"),
        ("on", "active"),
    ]
    # Head is what the models say, nothing more or less.
    assert await differences(empty_url) == []
    await asyncio.to_thread(command.downgrade, alembic_config(WEBHOOKS_DIR, empty_url), "0001")
    rows = await query(empty_url, "SELECT id, enabled FROM webhook_endpoints ORDER BY id")
    assert [(i, bool(e)) for i, e in rows] == [("off", False), ("on", True)]
    tables = await query(
        empty_url,
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'webhook_delivery_attempts'"
        if "postgresql" in empty_url
        else "SELECT count(*) FROM sqlite_master WHERE name = 'webhook_delivery_attempts'",
    )
    assert tables == [(0,)]
    await asyncio.to_thread(upgrade, WEBHOOKS_DIR, empty_url)
    assert await differences(empty_url) == []
