"""The orders service in-process on PostgreSQL, calling the real users and inventory processes of the
test stack (which share this session's databases)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import httpx
import pytest

from scripts.devstack import Stack
from services.inventory.app import create_app as create_inventory_app
from services.inventory.settings import InventorySettings
from services.orders.app import create_app as create_orders_app
from services.orders.settings import OrdersSettings
from shared.contract import ROLE_SCOPES, Identity
from shared.db import utcnow
from shared.identity_token import IdentitySigner
from tests.conftest import app_client, internal_headers, settings_kwargs
from tests.faults import refused_port
from tests.infra import Servers
from tests.orders_support import PASSWORD, SMALL_POOL, Caller, assert_problem, bootstrap_tenant, db_fetch, unique

RELAY = Identity(subject="service:webhooks", scopes=frozenset({"events:read"}))


def orders_settings(infra: Servers, stack: Stack, **overrides) -> OrdersSettings:
    values = {
        **settings_kwargs(infra, "orders"),
        "users_url": stack.url("users"),
        "inventory_url": stack.url("inventory"),
        "recovery_enabled": False,
        **SMALL_POOL,
        **overrides,
    }
    return OrdersSettings(**values)


@contextlib.asynccontextmanager
async def orders_app(infra: Servers, stack: Stack, **overrides) -> AsyncIterator[httpx.AsyncClient]:
    async for client in app_client(create_orders_app(orders_settings(infra, stack, **overrides))):
        yield client


@pytest.fixture(scope="module")
async def orders(migrated: Servers, stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with orders_app(migrated, stack) as client:
        yield client


@pytest.fixture(scope="module")
async def inventory(migrated: Servers) -> AsyncIterator[httpx.AsyncClient]:
    settings = InventorySettings(**settings_kwargs(migrated, "inventory"), **SMALL_POOL)
    async for client in app_client(create_inventory_app(settings)):
        yield client


@dataclass
class Shop:
    """One tenant's admin, at the orders service and at the inventory service."""

    orders: Caller
    inventory: Caller

    async def product(self, *, stock: int = 10, price_cents: int = 250, sku: str | None = None) -> dict:
        response = await self.inventory.post(
            "/products", json={"sku": sku or unique("SKU"), "name": "Mug", "price_cents": price_cents, "stock": stock}
        )
        assert response.status_code == 201, response.text
        return response.json()

    async def stock(self, product_id: str) -> int:
        return (await self.inventory.get(f"/products/{product_id}")).json()["stock"]

    async def order(self, *items: tuple[str, int], key: str | None = None) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else None
        body = {"items": [{"product_id": p, "quantity": q} for p, q in items]}
        return await self.orders.post("/orders", json=body, headers=headers)

    async def reservations(self) -> list[dict]:
        return (await self.inventory.get("/reservations", params={"limit": 200})).json()["items"]


@pytest.fixture
async def shop(users_client, signer: IdentitySigner, orders, inventory) -> Shop:
    admin = await bootstrap_tenant(users_client, signer)
    return Shop(Caller(orders, signer, "orders", admin), Caller(inventory, signer, "inventory", admin))


async def events_for(orders: httpx.AsyncClient, signer: IdentitySigner, tenant_id: str) -> list[dict]:
    feed, after = [], 0
    while True:
        page = await orders.get("/events", params={"after": after, "limit": 500}, headers=relay_headers(signer))
        assert page.status_code == 200, page.text
        body = page.json()
        feed += [event for event in body["items"] if event["tenant_id"] == tenant_id]
        if not body["items"]:
            return feed
        after = body["next_after"]


def relay_headers(signer: IdentitySigner) -> dict[str, str]:
    return internal_headers(signer, "orders", RELAY)


async def test_place_read_and_cancel_an_order(shop: Shop, orders, signer):
    mug = await shop.product(stock=10, price_cents=250)
    pen = await shop.product(stock=5, price_cents=99)
    placed = await shop.order((mug["id"], 3), (pen["id"], 1))
    assert placed.status_code == 201, placed.text
    order = placed.json()
    assert order["status"] == "confirmed"
    assert order["total_cents"] == 3 * 250 + 99
    assert [(i["product_id"], i["quantity"], i["unit_price_cents"], i["line_total_cents"]) for i in order["items"]] == [
        (mug["id"], 3, 250, 750),
        (pen["id"], 1, 99, 99),
    ]
    assert order["user_id"] == shop.orders.identity.subject
    assert order["tenant_id"] == shop.orders.identity.tenant_id
    assert [h["status"] for h in order["status_history"]] == ["confirmed"]
    assert await shop.stock(mug["id"]) == 7
    assert await shop.stock(pen["id"]) == 4
    reservation = (await shop.inventory.get(f"/reservations/{order['reservation_id']}")).json()
    assert reservation["status"] == "confirmed"
    assert reservation["order_id"] == order["id"]

    assert (await shop.orders.get(f"/orders/{order['id']}")).json() == order
    listed = (await shop.orders.get("/orders")).json()
    assert [o["id"] for o in listed["items"]] == [order["id"]]
    assert listed["next_cursor"] is None

    cancelled = await shop.orders.post(f"/orders/{order['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert [h["status"] for h in cancelled.json()["status_history"]] == ["confirmed", "cancelled"]
    assert await shop.stock(mug["id"]) == 10
    assert await shop.stock(pen["id"]) == 5
    assert (await shop.inventory.get(f"/reservations/{order['reservation_id']}")).json()["status"] == "released"

    again = await shop.orders.post(f"/orders/{order['id']}/cancel")
    assert_problem(again, 409, "ORDER_ALREADY_CANCELLED", field="status")
    assert await shop.stock(mug["id"]) == 10
    assert (await shop.orders.get("/orders", params={"status": "cancelled"})).json()["items"][0]["id"] == order["id"]
    assert (await shop.orders.get("/orders", params={"status": "confirmed"})).json()["items"] == []

    events = await events_for(orders, signer, order["tenant_id"])
    assert [e["type"] for e in events] == ["order.created", "order.cancelled"]
    assert events[0]["seq"] < events[1]["seq"]
    assert events[0]["data"] == order
    assert events[1]["data"] == cancelled.json()
    assert len({e["id"] for e in events}) == 2


async def test_concurrent_cancels_release_stock_once(shop: Shop):
    mug = await shop.product(stock=4)
    order = (await shop.order((mug["id"], 4))).json()
    results = await asyncio.gather(*(shop.orders.post(f"/orders/{order['id']}/cancel") for _ in range(8)))
    assert Counter(r.status_code for r in results) == {200: 1, 409: 7}
    assert await shop.stock(mug["id"]) == 4


async def test_bad_orders_are_refused_and_change_nothing(shop: Shop, orders, signer, migrated: Servers):
    mug = await shop.product(stock=3)
    cases = [
        ({"items": [{"product_id": mug["id"], "quantity": 0}]}, 422, None, "items.0.quantity"),
        ({"items": [{"product_id": mug["id"], "quantity": -2}]}, 422, None, "items.0.quantity"),
        ({"items": [{"product_id": mug["id"], "quantity": "1"}]}, 422, None, "items.0.quantity"),
        ({"items": [{"product_id": mug["id"], "quantity": 1.5}]}, 422, None, "items.0.quantity"),
        ({"items": [{"product_id": mug["id"], "quantity": 10_001}]}, 422, None, "items.0.quantity"),
        ({"items": []}, 422, None, "items"),
        ({}, 422, None, "items"),
        ({"items": [{"product_id": "../x", "quantity": 1}]}, 422, None, "items.0.product_id"),
        ({"items": [{"product_id": str(uuid.uuid4()), "quantity": 1}]}, 404, "PRODUCT_NOT_FOUND", "items.0.product_id"),
        (
            {"items": [{"product_id": mug["id"], "quantity": 1}, {"product_id": str(uuid.uuid4()), "quantity": 1}]},
            404,
            "PRODUCT_NOT_FOUND",
            "items.1.product_id",
        ),
        (
            {"items": [{"product_id": mug["id"], "quantity": 1}, {"product_id": mug["id"], "quantity": 1}]},
            422,
            None,
            "items.1.product_id",
        ),
        ({"items": [{"product_id": mug["id"], "quantity": 4}]}, 409, "INSUFFICIENT_STOCK", "items.0.quantity"),
        ({"items": [{"product_id": mug["id"], "quantity": 1, "price_cents": 0}]}, 422, None, "items.0.price_cents"),
    ]
    for body, status, code, field in cases:
        assert_problem(await shop.orders.post("/orders", json=body), status, code, field)
    bad_key = await shop.orders.post(
        "/orders", json={"items": [{"product_id": mug["id"], "quantity": 1}]}, headers={"Idempotency-Key": "has space"}
    )
    # The rules and the answer of the contract, as at the gateway.
    assert_problem(bad_key, 400, "INVALID_IDEMPOTENCY_KEY", field="idempotency-key")

    tenant_id = shop.orders.identity.tenant_id
    assert (await shop.orders.get("/orders")).json()["items"] == []
    assert await shop.stock(mug["id"]) == 3
    assert await shop.reservations() == []
    assert await events_for(orders, signer, tenant_id) == []
    # Refused attempts leave nothing behind, so no idempotency key or stock stays taken.
    assert await db_fetch(migrated, "orders", "SELECT id FROM order_attempts WHERE tenant_id = $1", tenant_id) == []


async def test_idempotency_key_places_an_order_once(shop: Shop, users_client, signer, orders, inventory):
    mug = await shop.product(stock=10)
    key = unique("key")
    first = await shop.order((mug["id"], 2), key=key)
    second = await shop.order((mug["id"], 2), key=key)
    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await shop.stock(mug["id"]) == 8

    other_body = await shop.order((mug["id"], 3), key=key)
    assert_problem(other_body, 422, "IDEMPOTENCY_KEY_REUSED", field="idempotency-key")

    # Concurrent repeats of a fresh key: one order; the rest replay it or are told it is in flight.
    fresh = unique("key")
    results = await asyncio.gather(*(shop.order((mug["id"], 1), key=fresh) for _ in range(10)))
    assert {r.status_code for r in results} <= {201, 409}
    assert len({r.json()["id"] for r in results if r.status_code == 201}) == 1
    assert await shop.stock(mug["id"]) == 7
    for refused in (r for r in results if r.status_code == 409):
        assert_problem(refused, 409, "IDEMPOTENCY_KEY_IN_USE")
        assert refused.headers["retry-after"] == "1"

    # A key belongs to its tenant: another tenant's identical key is a new order of its own.
    stranger_admin = await bootstrap_tenant(users_client, signer)
    stranger = Shop(shop.orders.as_(stranger_admin), shop.inventory.as_(stranger_admin))
    their_mug = await stranger.product(stock=1)
    theirs = await stranger.order((their_mug["id"], 1), key=key)
    assert theirs.status_code == 201
    assert theirs.json()["id"] != first.json()["id"]

    # A failed attempt frees its key: the retry, once stock is there, goes through.
    empty = await shop.product(stock=0)
    retry_key = unique("key")
    assert_problem(await shop.order((empty["id"], 1), key=retry_key), 409, "INSUFFICIENT_STOCK")
    await shop.inventory.post(f"/products/{empty['id']}/stock-adjustments", json={"delta": 1, "reason": "restock"})
    assert (await shop.order((empty["id"], 1), key=retry_key)).status_code == 201

    orders_listed = (await shop.orders.get("/orders")).json()["items"]
    assert len(orders_listed) == 3


async def test_an_idempotency_key_is_its_callers_own(shop: Shop, users_client, signer):
    """Another caller of the tenant sending the same key and body places an order of its own; it is
    never handed the first caller's answer."""
    mug = await shop.product(stock=10)
    created = await users_client.post(
        "/users",
        json={"email": f"{unique('member')}@example.com", "password": PASSWORD, "role": "member"},
        headers=internal_headers(signer, "users", shop.orders.identity),
    )
    assert created.status_code == 201, created.text
    member_identity = Identity(
        subject=created.json()["id"],
        tenant_id=shop.orders.identity.tenant_id,
        scopes=ROLE_SCOPES["member"],
        plan="pro",
        role="member",
    )
    member = Shop(shop.orders.as_(member_identity), shop.inventory.as_(member_identity))
    key = unique("key")
    admins = await shop.order((mug["id"], 2), key=key)
    theirs = await member.order((mug["id"], 2), key=key)
    assert admins.status_code == theirs.status_code == 201, theirs.text
    assert "idempotent-replayed" not in theirs.headers
    assert theirs.json()["id"] != admins.json()["id"]
    assert theirs.json()["user_id"] == member_identity.subject
    assert await shop.stock(mug["id"]) == 6
    for caller, first in ((shop, admins), (member, theirs)):
        again = await caller.order((mug["id"], 2), key=key)
        assert again.headers["idempotent-replayed"] == "true"
        assert again.content == first.content
    # Within one caller the rules hold as before.
    assert_problem(await member.order((mug["id"], 3), key=key), 422, "IDEMPOTENCY_KEY_REUSED", field="idempotency-key")


async def test_another_tenants_order_is_404_like_a_missing_one(shop: Shop, users_client, signer):
    mug = await shop.product(stock=2)
    order = (await shop.order((mug["id"], 1))).json()
    intruder = shop.orders.as_(await bootstrap_tenant(users_client, signer))
    missing = str(uuid.uuid4())
    for method, template in [("GET", "/orders/{}"), ("POST", "/orders/{}/cancel")]:
        theirs = await intruder.request(method, template.format(order["id"]))
        absent = await intruder.request(method, template.format(missing))
        assert_problem(theirs, 404, "ORDER_NOT_FOUND")
        assert_problem(absent, 404, "ORDER_NOT_FOUND")
        assert theirs.json()["detail"].replace(order["id"], "?") == absent.json()["detail"].replace(missing, "?")
    assert (await intruder.get("/orders")).json()["items"] == []
    # Ordering another tenant's product is ordering an unknown product.
    stolen = await intruder.post("/orders", json={"items": [{"product_id": mug["id"], "quantity": 1}]})
    assert_problem(stolen, 404, "PRODUCT_NOT_FOUND", field="items.0.product_id")
    assert (await shop.orders.get(f"/orders/{order['id']}")).json()["status"] == "confirmed"
    assert await shop.stock(mug["id"]) == 1


async def test_scopes_and_unknown_users(shop: Shop, orders):
    mug = await shop.product(stock=2)
    reader = shop.orders.as_(
        Identity(
            subject=shop.orders.identity.subject,
            tenant_id=shop.orders.identity.tenant_id,
            scopes=frozenset({"orders:read"}),
        )
    )
    assert_problem(
        await reader.post("/orders", json={"items": [{"product_id": mug["id"], "quantity": 1}]}),
        403,
        "INSUFFICIENT_SCOPE",
    )
    assert (await reader.get("/orders")).status_code == 200
    ghost = shop.orders.as_(
        Identity(
            subject=str(uuid.uuid4()), tenant_id=shop.orders.identity.tenant_id, scopes=frozenset({"orders:write"})
        )
    )
    assert_problem(
        await ghost.post("/orders", json={"items": [{"product_id": mug["id"], "quantity": 1}]}), 403, "UNKNOWN_USER"
    )
    assert await shop.stock(mug["id"]) == 2
    assert_problem(await orders.get("/orders"), 401, "MISSING_INTERNAL_IDENTITY")
    assert_problem(await shop.orders.get("/orders", params={"cursor": "x"}), 422, "INVALID_CURSOR", "cursor")
    assert_problem(await shop.orders.get("/orders", params={"limit": 201}), 422, field="limit")
    assert_problem(await shop.orders.get("/orders", params={"user_id": "a\u0000"}), 422, field="user_id")
    assert_problem(await shop.orders.get("/orders/a%00b"), 422, field="order_id")


async def test_orders_page_through_with_a_cursor(shop: Shop):
    mug = await shop.product(stock=10)
    placed = [(await shop.order((mug["id"], 1))).json()["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await shop.orders.get("/orders", params=params)).json()
        seen += [o["id"] for o in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == placed[::-1]


async def test_event_feed_is_for_services_with_the_scope(orders, signer, shop: Shop, migrated: Servers):
    user = await orders.get("/events", headers=internal_headers(signer, "orders", shop.orders.identity))
    assert_problem(user, 403, "SERVICE_ONLY")
    no_scope = Identity(subject="service:webhooks", scopes=frozenset({"orders:read"}))
    assert_problem(
        await orders.get("/events", headers=internal_headers(signer, "orders", no_scope)), 403, "INSUFFICIENT_SCOPE"
    )
    assert_problem(await orders.get("/events"), 401)
    for params, field in [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"after": -1}, "after"),
        ({"after": 2**63}, "after"),  # past the 64-bit seq column
    ]:
        assert_problem(await orders.get("/events", params=params, headers=relay_headers(signer)), 422, field=field)
    page = await orders.get("/events", params={"after": 10**12}, headers=relay_headers(signer))
    assert page.json() == {"items": [], "next_after": 10**12, "pruned_through": 0}

    # From where the feed ends now, three orders of this tenant: one page, then pages of two.
    [start] = await db_fetch(migrated, "orders", "SELECT coalesce(max(seq), 0) AS seq FROM outbox")
    mug = await shop.product(stock=5)
    placed = [(await shop.order((mug["id"], 1))).json()["id"] for _ in range(3)]
    whole = await orders.get("/events", params={"after": start["seq"], "limit": 500}, headers=relay_headers(signer))
    events = whole.json()["items"]
    assert [(e["type"], e["data"]["id"]) for e in events] == [("order.created", order_id) for order_id in placed]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    assert whole.json()["next_after"] == seqs[-1]
    paged, after = [], start["seq"]
    while True:
        page = (await orders.get("/events", params={"after": after, "limit": 2}, headers=relay_headers(signer))).json()
        assert len(page["items"]) <= 2
        if not page["items"]:
            assert page["next_after"] == after
            break
        paged += [e["seq"] for e in page["items"]]
        after = page["next_after"]
    assert paged == seqs


async def test_event_feed_serves_one_tenant_when_asked(orders, signer, shop: Shop, users_client, inventory):
    other_admin = await bootstrap_tenant(users_client, signer)
    other = Shop(Caller(orders, signer, "orders", other_admin), Caller(inventory, signer, "inventory", other_admin))
    mine, theirs = await shop.product(stock=5), await other.product(stock=5)
    for _ in range(2):
        await shop.order((mine["id"], 1))
        await other.order((theirs["id"], 1))
    tenant = shop.orders.identity.tenant_id
    page = await orders.get("/events", params={"tenant_id": tenant, "limit": 500}, headers=relay_headers(signer))
    items = page.json()["items"]
    assert len(items) == 2
    assert {e["tenant_id"] for e in items} == {tenant}
    after_first = await orders.get(
        "/events", params={"tenant_id": tenant, "after": items[0]["seq"]}, headers=relay_headers(signer)
    )
    assert [e["seq"] for e in after_first.json()["items"]] == [items[1]["seq"]]
    bad = await orders.get("/events", params={"tenant_id": "no spaces"}, headers=relay_headers(signer))
    assert_problem(bad, 422, field="tenant_id")


async def insert_event(conn: asyncpg.Connection, tenant_id: str) -> int:
    return await conn.fetchval(
        "INSERT INTO outbox (id, tenant_id, type, data, created_at) VALUES ($1, $2, 'order.created', $3, now()) "
        "RETURNING seq",
        str(uuid.uuid4()),
        tenant_id,
        json.dumps({"id": str(uuid.uuid4()), "status": "confirmed", "items": [], "total_cents": 0}),
    )


async def test_event_feed_never_skips_a_transaction_that_commits_late(migrated: Servers, stack: Stack, signer):
    """seq 1 drawn first but committed after seq 2: the feed must not hand out 2 and then move past 1."""
    tenant_id = str(uuid.uuid4())
    slow = await asyncpg.connect(migrated.database_dsn("orders"))
    fast = await asyncpg.connect(migrated.database_dsn("orders"))
    async with (
        orders_app(migrated, stack, events_lock_timeout_ms=150) as impatient,
        orders_app(migrated, stack) as orders,
    ):
        try:
            transaction = slow.transaction()
            await transaction.start()
            first = await insert_event(slow, tenant_id)
            second = await insert_event(fast, tenant_id)
            assert first < second

            busy = await impatient.get("/events", params={"after": first - 1}, headers=relay_headers(signer))
            assert_problem(busy, 503, "EVENTS_BUSY")
            assert busy.headers["retry-after"] == "1"

            reading = asyncio.create_task(
                orders.get("/events", params={"after": first - 1, "limit": 500}, headers=relay_headers(signer))
            )
            await asyncio.sleep(0.3)
            assert not reading.done(), "the feed answered while a lower seq was still in flight"
            await transaction.commit()
            page = (await reading).json()
            mine = [e["seq"] for e in page["items"] if e["tenant_id"] == tenant_id]
            assert mine == [first, second]
        finally:
            await slow.close()
            await fast.close()


async def test_injected_storage_failure_leaves_no_reservation(migrated: Servers, stack: Stack, shop: Shop, signer):
    """A real failure between reserving and storing: a trigger makes the order_items insert fail in
    the stack's orders process, after the inventory service has reserved the stock."""
    conn = await asyncpg.connect(migrated.database_dsn("orders"))
    await conn.execute(
        "CREATE OR REPLACE FUNCTION portico_test_fail_items() RETURNS trigger AS $$ "
        "BEGIN RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql"
    )
    await conn.execute(
        "CREATE TRIGGER portico_test_fail_items BEFORE INSERT ON order_items FOR EACH ROW "
        "WHEN (NEW.sku LIKE 'EXPLODE-%') EXECUTE FUNCTION portico_test_fail_items()"
    )
    try:
        doomed = await shop.product(stock=5, sku=unique("EXPLODE"))
        fine = await shop.product(stock=5)
        async with httpx.AsyncClient(base_url=stack.url("orders"), timeout=30) as process:
            caller = shop.orders.to(process, "orders")
            failed = await caller.post(
                "/orders",
                json={
                    "items": [{"product_id": fine["id"], "quantity": 2}, {"product_id": doomed["id"], "quantity": 1}]
                },
            )
            assert_problem(failed, 500, "INTERNAL_ERROR")
            assert "injected" not in failed.text
            # The process closes this connection after the error: the next call opens another.
            assert failed.headers["connection"] == "close"
            # The stock was reserved, then released again before the answer was sent.
            reservations = await shop.reservations()
            assert [r["status"] for r in reservations] == ["released"]
            assert [(i["product_id"], i["quantity"]) for i in reservations[0]["items"]] == [
                (fine["id"], 2),
                (doomed["id"], 1),
            ]
            assert await shop.stock(doomed["id"]) == 5
            assert await shop.stock(fine["id"]) == 5
            tenant_id = shop.orders.identity.tenant_id
            assert (await caller.get("/orders")).json()["items"] == []
            assert (
                await db_fetch(migrated, "orders", "SELECT 1 FROM order_attempts WHERE tenant_id = $1", tenant_id) == []
            )
            assert await db_fetch(migrated, "orders", "SELECT 1 FROM outbox WHERE tenant_id = $1", tenant_id) == []
            # The same request without the failing product goes through.
            ok = await caller.post("/orders", json={"items": [{"product_id": fine["id"], "quantity": 2}]})
            assert ok.status_code == 201, ok.text
            assert await shop.stock(fine["id"]) == 3
    finally:
        await conn.execute("DROP TRIGGER IF EXISTS portico_test_fail_items ON order_items")
        await conn.close()


async def test_recovery_releases_what_requests_left_behind(migrated: Servers, stack: Stack, shop: Shop, signer):
    tenant_id = shop.orders.identity.tenant_id
    mug = await shop.product(stock=10)

    # 1. A process that died between reserving and storing: a pending attempt, its stock reserved.
    crashed = str(uuid.uuid4())
    conn = await asyncpg.connect(migrated.database_dsn("orders"))
    try:
        await conn.execute(
            "INSERT INTO order_attempts (id, tenant_id, request_hash, state, created_at, updated_at) "
            "VALUES ($1, $2, $3, 'pending', $4, $4)",
            crashed,
            tenant_id,
            "0" * 64,
            utcnow() - timedelta(minutes=5),
        )
    finally:
        await conn.close()
    held = await shop.inventory.post(
        "/reservations", json={"order_id": crashed, "items": [{"product_id": mug["id"], "quantity": 4}]}
    )
    assert held.status_code == 201

    # 2. A cancellation while the inventory service was unreachable: cancelled, stock still held.
    order = (await shop.order((mug["id"], 3))).json()
    assert await shop.stock(mug["id"]) == 3
    with refused_port() as port:
        async with orders_app(migrated, stack, inventory_url=f"http://127.0.0.1:{port}") as cut_off:
            cancelled = await shop.orders.to(cut_off, "orders").post(f"/orders/{order['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    # This order's stock is still held. (The total may already have risen: the recovery task of an
    # orders process of the session may release the dead attempt's 4 at any moment from here on.)
    held_now = {r["order_id"]: r["status"] for r in await shop.reservations()}
    assert held_now[order["id"]] == "confirmed"
    assert await shop.stock(mug["id"]) in (3, 3 + 4)

    async def repaired() -> bool:
        # The stock comes back before the order row says so: wait for both while the task runs.
        if await shop.stock(mug["id"]) != 10:
            return False
        rows = await db_fetch(migrated, "orders", "SELECT reservation_status FROM orders WHERE id = $1", order["id"])
        return rows[0]["reservation_status"] == "released"

    # The recovery task of any orders process repairs both.
    async with orders_app(
        migrated, stack, recovery_enabled=True, recovery_interval_seconds=0.1, recovery_grace_seconds=0
    ):
        deadline = time.monotonic() + 60
        while not await repaired() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    assert await shop.stock(mug["id"]) == 10
    statuses = Counter(r["status"] for r in await shop.reservations())
    assert statuses == {"released": 2}
    assert await db_fetch(migrated, "orders", "SELECT 1 FROM order_attempts WHERE id = $1", crashed) == []
    rows = await db_fetch(migrated, "orders", "SELECT reservation_status FROM orders WHERE id = $1", order["id"])
    assert rows[0]["reservation_status"] == "released"
    # A late reserve call for the dead attempt can no longer take stock.
    late = await shop.inventory.post(
        "/reservations", json={"order_id": crashed, "items": [{"product_id": mug["id"], "quantity": 4}]}
    )
    assert_problem(late, 409, "RESERVATION_RELEASED")


async def test_a_service_adds_its_event_to_the_feed_once(orders, signer, shop: Shop, migrated: Servers):
    """The gateway adds its own events (`quota.threshold_reached`) to the feed: only a service with
    `events:write`, only the types other services publish, and an id already there adds nothing."""
    publisher = Identity(subject="service:gateway", scopes=frozenset({"events:write"}))
    tenant = str(uuid.uuid4())
    event = {
        "id": str(uuid.uuid4()),
        "type": "quota.threshold_reached",
        "tenant_id": tenant,
        "data": {"threshold": 80, "period_start": "2026-12-01T00:00:00Z", "limit": 10, "used": 8},
    }
    user = await orders.post("/events", json=event, headers=internal_headers(signer, "orders", shop.orders.identity))
    assert_problem(user, 403, "SERVICE_ONLY")
    assert_problem(await orders.post("/events", json=event, headers=relay_headers(signer)), 403, "INSUFFICIENT_SCOPE")
    headers = internal_headers(signer, "orders", publisher)
    order_event = {**event, "type": "order.created"}
    assert_problem(await orders.post("/events", json=order_event, headers=headers), 422, field="type")
    for _ in range(2):
        assert (await orders.post("/events", json=event, headers=headers)).status_code == 202
    page = await orders.get("/events", params={"tenant_id": tenant}, headers=relay_headers(signer))
    assert [(e["id"], e["type"], e["data"]) for e in page.json()["items"]] == [
        (event["id"], event["type"], event["data"])
    ]
