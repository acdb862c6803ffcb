"""The credit check of the orders service on PostgreSQL: what a user's open orders and pending claims
add up to must be read as of one moment, whatever commits while it is read."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from services.orders.repository import OrderRepository
from shared.db import utcnow
from tests.infra import Servers


@pytest.fixture
async def engine(migrated: Servers) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(migrated.database_url("orders"))
    yield engine
    await engine.dispose()


async def claim(dsn: str, tenant_id: str, user_id: str, attempt_id: str, cents: int) -> None:
    """A pending attempt of the user holding `cents` of credit, as `_claim_credit` leaves it."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO order_attempts (id, tenant_id, caller, request_hash, state, user_id, credit_cents,"
            " created_at, updated_at) VALUES ($1, $2, $3, $4, 'pending', $3, $5, $6, $6)",
            attempt_id,
            tenant_id,
            user_id,
            "0" * 64,
            cents,
            utcnow(),
        )
    finally:
        await conn.close()


async def store(dsn: str, tenant_id: str, user_id: str, attempt_id: str, cents: int) -> None:
    """What `_store` commits: the attempt's claim ends and its order appears, in one transaction."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("DELETE FROM order_attempts WHERE id = $1", attempt_id)
            await conn.execute(
                "INSERT INTO orders (id, tenant_id, user_id, status, total_cents, reservation_id,"
                " reservation_status, created_at, updated_at)"
                " VALUES ($1, $2, $3, 'confirmed', $4, $5, 'reserved', $6, $6)",
                attempt_id,
                tenant_id,
                user_id,
                cents,
                str(uuid.uuid4()),
                utcnow(),
            )
    finally:
        await conn.close()


async def test_open_total_counts_an_order_committed_while_it_is_read(migrated: Servers, engine: AsyncEngine):
    """The race that let a user's third concurrent order pass a limit only two fit in: the order of
    another attempt committed between reading the orders and reading the claims was counted in
    neither. Here that commit is made at the worst moment, right after the check's first statement."""
    dsn = migrated.database_dsn("orders")
    tenant_id, user_id, attempt_id = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    await claim(dsn, tenant_id, user_id, attempt_id, 300)

    committed = threading.Event()

    def commit_the_order_now(*_: Any) -> None:
        if committed.is_set():
            return
        committed.set()
        # Another connection, on a loop of its own: this hook runs inside the check's own statement.
        worker = threading.Thread(target=asyncio.run, args=(store(dsn, tenant_id, user_id, attempt_id, 300),))
        worker.start()
        worker.join()

    event.listen(engine.sync_engine, "after_cursor_execute", commit_the_order_now)
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            total = await OrderRepository(session).open_total(tenant_id, user_id)
    finally:
        event.remove(engine.sync_engine, "after_cursor_execute", commit_the_order_now)

    assert committed.is_set()
    # Counted once: as the claim it was when the check read, and never as nothing.
    assert total == 300
    async with async_sessionmaker(engine)() as session, session.begin():
        assert await OrderRepository(session).open_total(tenant_id, user_id) == 300
