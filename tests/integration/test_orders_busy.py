"""An overloaded orders service sheds placements at once (503 ORDERS_BUSY with Retry-After) instead of
making its callers wait for their timeout."""

from __future__ import annotations

import asyncio

from services.orders.app import create_app
from services.orders.settings import OrdersSettings
from tests.aggregate_support import ScriptedService, eventually
from tests.conftest import app_client, settings_kwargs
from tests.infra import Servers
from tests.orders_support import SMALL_POOL, Caller, assert_problem, tenant_identity

ORDER = {"items": [{"product_id": "p-1", "quantity": 1}]}


async def test_a_placement_past_the_queue_time_is_503_with_retry_after(migrated: Servers, signer):
    hanging = ScriptedService(lambda method, path: None)  # the users check never answers
    async with hanging.running():
        settings = OrdersSettings(
            **settings_kwargs(migrated, "orders"),
            **SMALL_POOL,
            users_url=hanging.url,
            inventory_url=hanging.url,
            recovery_enabled=False,
            placement_concurrency=1,
            placement_queue_seconds=0.2,
        )
        clients = app_client(create_app(settings))
        client = await anext(clients)
        try:
            caller = Caller(client, signer, "orders", tenant_identity())
            first = asyncio.ensure_future(caller.post("/orders", json=ORDER))
            await eventually(lambda: len(hanging.requests) == 1)  # the first holds the only slot
            busy = await caller.post("/orders", json=ORDER)
            assert_problem(busy, 503, "ORDERS_BUSY")
            assert busy.headers["retry-after"] == "1"
            assert len(hanging.requests) == 1  # shed before any call
            # The first one ends when its users call times out, and frees the slot.
            assert_problem(await first, 504, "DOWNSTREAM_TIMEOUT")
        finally:
            await clients.aclose()
