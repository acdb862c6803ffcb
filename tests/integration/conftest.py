"""Fixtures of the migration tests."""

from __future__ import annotations

import pytest

from tests.infra import Servers
from tests.webhook_support import _create_pg, _drop_pg


@pytest.fixture(params=["postgresql", "sqlite"])
async def empty_url(request, migrated: Servers, tmp_path):
    """An empty database, on PostgreSQL (created for the test, dropped after) and on SQLite."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'webhooks.db'}"
        return
    name, dsn = await _create_pg(migrated, "migrations")
    try:
        yield dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    finally:
        await _drop_pg(migrated, name)
