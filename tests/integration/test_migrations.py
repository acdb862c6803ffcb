"""Migrations up and down on PostgreSQL and SQLite, with rows in the tables: each keeps what the rows
said, and head is exactly what the models say. A database at head is not migrated again, nor is a
process started for it; one behind is."""

from __future__ import annotations

import asyncio
import importlib
import logging

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase

from scripts.devstack import Stack
from services.orders.models import Base as OrdersBase
from services.webhooks.models import Base as WebhooksBase
from shared.contract import PROCESSES, SERVICES
from shared.migrations import alembic_config, at_head, current_revisions, head_revisions, upgrade
from tests.infra import Servers
from tests.webhook_support import ROOT, WEBHOOKS_DIR, _create_pg, _drop_pg

ORDERS_DIR = ROOT / "services" / "orders"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

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


async def differences(url: str, base: type[DeclarativeBase] = WebhooksBase) -> list:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), base.metadata
                )
            )
    finally:
        await engine.dispose()


async def test_0002_delivery_up_and_down_keeps_what_endpoints_said(empty_url):
    await asyncio.to_thread(upgrade, WEBHOOKS_DIR, empty_url, "0001")
    await query(empty_url, ENDPOINTS)
    await asyncio.to_thread(upgrade, WEBHOOKS_DIR, empty_url, "0002_delivery")
    assert await query(empty_url, "SELECT id, status FROM webhook_endpoints ORDER BY id") == [
        ("off", "disabled"),
        ("on", "active"),
    ]
    # Head is what the models say, nothing more or less.
    await asyncio.to_thread(upgrade, WEBHOOKS_DIR, empty_url)
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


def is_postgres(url: str) -> bool:
    return "postgresql" in url


async def columns(url: str, table: str) -> list[str]:
    if is_postgres(url):
        sql = f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}' ORDER BY column_name"
    else:
        sql = f"SELECT name FROM pragma_table_info('{table}') ORDER BY name"
    return [name for (name,) in await query(url, sql)]


async def test_0003_event_trace_up_and_down_keeps_the_events(empty_url):
    await asyncio.to_thread(upgrade, WEBHOOKS_DIR, empty_url, "0002_delivery")
    await query(
        empty_url,
        "INSERT INTO webhook_events (id, seq, tenant_id, type, data, occurred_at, received_at) VALUES "
        "('e1', 1, 't', 'order.created', '{}', '2026-01-01 00:00:00+00', '2026-01-01 00:00:00+00')",
    )
    await asyncio.to_thread(upgrade, WEBHOOKS_DIR, empty_url, "0003_event_trace")
    assert await query(empty_url, "SELECT id, traceparent FROM webhook_events") == [("e1", None)]
    await query(empty_url, f"UPDATE webhook_events SET traceparent = '{TRACEPARENT}'")
    # Head is what the models say.
    await asyncio.to_thread(upgrade, WEBHOOKS_DIR, empty_url)
    assert await differences(empty_url) == []
    await asyncio.to_thread(command.downgrade, alembic_config(WEBHOOKS_DIR, empty_url), "0002_delivery")
    assert "traceparent" not in await columns(empty_url, "webhook_events")
    assert await query(empty_url, "SELECT id, seq FROM webhook_events") == [("e1", 1)]
    await asyncio.to_thread(upgrade, WEBHOOKS_DIR, empty_url)
    assert await differences(empty_url) == []


async def test_0002_outbox_trace_up_and_down_keeps_the_outbox_and_its_sequence(empty_url):
    await asyncio.to_thread(upgrade, ORDERS_DIR, empty_url, "0001")
    outbox = (
        "INSERT INTO outbox (id, tenant_id, type, data, created_at) "
        "VALUES ('{}', 't', 'order.created', '{{}}', '2026-01-01 00:00:00+00')"
    )
    await query(empty_url, outbox.format("o1"))
    await asyncio.to_thread(upgrade, ORDERS_DIR, empty_url, "0002_outbox_trace")
    assert await query(empty_url, "SELECT seq, id, traceparent FROM outbox") == [(1, "o1", None)]
    await query(empty_url, f"UPDATE outbox SET traceparent = '{TRACEPARENT}'")
    await asyncio.to_thread(command.downgrade, alembic_config(ORDERS_DIR, empty_url), "0001")
    assert "traceparent" not in await columns(empty_url, "outbox")
    # The newest event deleted: its seq is still never handed out again (SQLite keeps AUTOINCREMENT).
    await query(empty_url, outbox.format("o2"))
    await query(empty_url, "DELETE FROM outbox WHERE id = 'o2'")
    await query(empty_url, outbox.format("o3"))
    assert await query(empty_url, "SELECT seq, id FROM outbox ORDER BY seq") == [(1, "o1"), (3, "o3")]
    await asyncio.to_thread(upgrade, ORDERS_DIR, empty_url)
    assert await differences(empty_url, OrdersBase) == []


SERVICE_BASES = {
    "users": "services.users.models",
    "inventory": "services.inventory.models",
    "orders": "services.orders.models",
    "webhooks": "services.webhooks.models",
}


async def tables(url: str) -> list[str]:
    rows = await query(
        url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name"
    )
    return [name for (name,) in rows]


@pytest.mark.parametrize("service", list(SERVICE_BASES))
async def test_every_service_migrates_up_down_and_up_again_on_postgresql(migrated: Servers, service: str):
    """Head, all the way down, and head again: each downgrade undoes its upgrade completely (nothing
    left behind, nothing missing), and head is exactly what the models say both times."""
    base: type[DeclarativeBase] = importlib.import_module(SERVICE_BASES[service]).Base
    directory = ROOT / "services" / service
    name, dsn = await _create_pg(migrated, f"updown_{service}")
    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        await asyncio.to_thread(upgrade, directory, url)
        assert await differences(url, base) == []
        assert set(await tables(url)) == {*base.metadata.tables, "alembic_version"}
        await asyncio.to_thread(command.downgrade, alembic_config(directory, url), "base")
        assert await tables(url) == ["alembic_version"]
        # No enum type, sequence, function or index outlives its tables.
        assert await query(url, "SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                                "WHERE n.nspname = 'public' AND t.typtype = 'e'") == [(0,)]  # fmt: skip
        assert await query(url, "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                "WHERE n.nspname = 'public' AND c.relkind IN ('S', 'i') "
                                "AND relname <> 'alembic_version_pkc'") == []  # fmt: skip
        assert await query(url, "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                                "WHERE n.nspname = 'public'") == []  # fmt: skip
        await asyncio.to_thread(upgrade, directory, url)
        assert await differences(url, base) == []
    finally:
        await _drop_pg(migrated, name)


@pytest.mark.parametrize("service", list(SERVICE_BASES))
def test_the_head_read_from_the_files_is_alembics(service):
    directory = ROOT / "services" / service
    assert head_revisions(directory) == set(ScriptDirectory(str(directory / "alembic")).get_heads())


async def test_a_database_at_head_is_not_migrated_again(empty_url, caplog):
    assert not await asyncio.to_thread(at_head, WEBHOOKS_DIR, empty_url)
    await asyncio.to_thread(upgrade, WEBHOOKS_DIR, empty_url, "0002_delivery")
    assert await asyncio.to_thread(current_revisions, empty_url) == {"0002_delivery"}
    assert not await asyncio.to_thread(at_head, WEBHOOKS_DIR, empty_url)
    await asyncio.to_thread(upgrade, WEBHOOKS_DIR, empty_url)
    assert await asyncio.to_thread(at_head, WEBHOOKS_DIR, empty_url)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        await asyncio.to_thread(upgrade, WEBHOOKS_DIR, empty_url)
    # Alembic's environment never ran (it logs its context first thing).
    assert [r.name for r in caplog.records] == ["portico.migrations"], caplog.text
    assert await differences(empty_url) == []


def test_only_the_databases_behind_are_migrated_and_by_their_own_processes(tmp_path):
    """As `make run` migrates: every service's database is at head but one, one revision behind. Only
    that one's `python -m services.<name> migrate` runs (each process logs to its own file), and it
    brings the database to head; run again, nothing runs at all."""
    urls = {name: f"sqlite+aiosqlite:///{tmp_path / name}.db" for name in SERVICES}
    for name, url in urls.items():
        upgrade(ROOT / "services" / name, url)
    users_dir = ROOT / "services" / "users"
    (users_head,) = head_revisions(users_dir)
    command.downgrade(alembic_config(users_dir, urls["users"]), "-1")
    assert current_revisions(urls["users"]) != {users_head}
    logs = tmp_path / "logs"
    stack = Stack(
        env={f"{PROCESSES[name].env_prefix}DATABASE_URL": url for name, url in urls.items()}, log_dir=logs, cwd=ROOT
    )

    stack.migrate()
    assert sorted(p.name for p in logs.glob("*.log")) == ["users.log"]
    assert f"-> {users_head}" in (logs / "users.log").read_text()
    assert all(at_head(ROOT / "services" / name, url) for name, url in urls.items())

    written = (logs / "users.log").stat().st_size
    stack.migrate()
    assert sorted(p.name for p in logs.glob("*.log")) == ["users.log"]
    assert (logs / "users.log").stat().st_size == written
