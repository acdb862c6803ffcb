"""Database pool metrics of a service, and a wait for a connection that runs out: 503 with
Retry-After, counted. A row lock held from outside keeps the one connection busy."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from services.inventory.app import create_app
from services.inventory.settings import InventorySettings
from tests.aggregate_support import metric
from tests.conftest import app_client, settings_kwargs
from tests.infra import Servers
from tests.orders_support import Caller, assert_problem, tenant_identity, unique

NAMES = (
    "portico_db_pool_size",
    "portico_db_pool_checked_out",
    "portico_db_pool_overflow",
    "portico_db_pool_waiters",
    "portico_db_pool_timeouts_total",
)


async def scraped(caller: Caller, name: str) -> float | None:
    return metric((await caller.client.get("/metrics")).text, name)


async def until(caller: Caller, name: str, value: float) -> None:
    deadline = time.monotonic() + 30
    while await scraped(caller, name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        await asyncio.sleep(0.05)


async def test_pool_metrics_and_a_wait_that_runs_out(migrated: Servers, signer):
    settings = InventorySettings(
        **settings_kwargs(migrated, "inventory"), db_pool_size=1, db_max_overflow=0, db_pool_timeout_seconds=1.0
    )
    clients = app_client(create_app(settings))
    client = await anext(clients)
    try:
        caller = Caller(client, signer, "inventory", tenant_identity())
        created = await caller.post(
            "/products", json={"sku": unique("SKU"), "name": "Mug", "price_cents": 100, "stock": 1}
        )
        assert created.status_code == 201, created.text
        product_id = created.json()["id"]
        text = (await client.get("/metrics")).text
        for name in NAMES:
            assert name in text, name
        await until(caller, "portico_db_pool_size", 1)
        await until(caller, "portico_db_pool_checked_out", 0)

        holder = await asyncpg.connect(migrated.database_dsn("inventory"))
        lock = holder.transaction()
        await lock.start()
        await holder.execute("SELECT 1 FROM products WHERE id = $1 FOR UPDATE", product_id)
        adjust = f"/products/{product_id}/stock-adjustments"
        blocked = asyncio.ensure_future(caller.post(adjust, json={"delta": 1, "reason": "restock"}))
        try:
            await until(caller, "portico_db_pool_checked_out", 1)
            waiting = asyncio.ensure_future(caller.get(f"/products/{product_id}"))
            await until(caller, "portico_db_pool_waiters", 1)
            response = await waiting
            assert_problem(response, 503, "DATABASE_UNAVAILABLE")
            assert response.headers["retry-after"] == "1"
            await until(caller, "portico_db_pool_timeouts_total", 1)
        finally:
            await lock.rollback()
            await holder.close()
        assert (await blocked).status_code == 201
        await until(caller, "portico_db_pool_checked_out", 0)
    finally:
        await clients.aclose()
