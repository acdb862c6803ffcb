"""The order saga when a step's outcome is unknown, on real processes.

The orders service runs in-process; the inventory service is a real subprocess of this module's own
(so it can be hung with SIGSTOP, killed with SIGKILL and started again), reached through an HTTP
fault injector (`tests.faults.HttpFaultProxy`) that can make it answer wrongly after doing the work.
The users service is the test stack's, reached through a fault injector too. Every test ends on the
stock, the reservation and the order as they are in the databases: no unit leaked, none counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import httpx
import pytest

from scripts.devstack import Stack
from services.inventory.app import create_app as create_inventory_app
from services.inventory.settings import InventorySettings
from services.orders.app import create_app as create_orders_app
from services.orders.settings import OrdersSettings
from shared.identity_token import IdentitySigner
from tests.conftest import ROOT, app_client, service_env, settings_kwargs
from tests.faults import HttpFaultProxy, ServiceProcess, eventually, failing_statements
from tests.infra import Servers
from tests.orders_support import SMALL_POOL, Caller, assert_problem, bootstrap_tenant, db_fetch, unique

RESERVE = ("POST", "/reservations")
RELEASE = ("POST", "/orders/[^/]+/reservation/release")
CONFIRM = ("POST", "/reservations/[^/]+/confirm")
USER_CHECK = ("GET", "/users/me")


@pytest.fixture(scope="module")
async def inventory_process(
    migrated: Servers, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServiceProcess]:
    """This module's own inventory process, on the session's inventory database."""
    process = ServiceProcess("inventory", service_env(migrated), tmp_path_factory.mktemp("inventory-logs"), ROOT)
    await asyncio.to_thread(process.start)
    try:
        yield process
    finally:
        await asyncio.to_thread(process.stop)


@pytest.fixture(scope="module")
async def inventory_proxy(inventory_process: ServiceProcess) -> AsyncIterator[HttpFaultProxy]:
    async with HttpFaultProxy(inventory_process.url) as proxy:
        yield proxy


@pytest.fixture(scope="module")
async def users_proxy(stack: Stack) -> AsyncIterator[HttpFaultProxy]:
    async with HttpFaultProxy(stack.url("users")) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
async def no_faults_left(inventory_proxy: HttpFaultProxy, users_proxy: HttpFaultProxy) -> AsyncIterator[None]:
    yield
    inventory_proxy.clear()
    users_proxy.clear()


@dataclass
class Saga:
    migrated: Servers
    inventory_proxy: HttpFaultProxy
    users_proxy: HttpFaultProxy

    @contextlib.asynccontextmanager
    async def orders(self, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
        """An orders app reaching inventory and users through the fault injectors; its recovery task
        is off unless asked for. Its circuit breakers are off: these tests inject failure after failure
        on purpose, and an open circuit would answer for the saga and hide what the saga itself does
        (the breaker has tests of its own, `tests/e2e/test_resilience.py`)."""
        values = {
            **settings_kwargs(self.migrated, "orders"),
            "users_url": self.users_proxy.url,
            "inventory_url": self.inventory_proxy.url,
            "recovery_enabled": False,
            "circuit_enabled": False,
            **SMALL_POOL,
            **overrides,
        }
        async for client in app_client(create_orders_app(OrdersSettings(**values))):
            yield client

    def recovering(self, **overrides: object) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
        """An orders app whose recovery task runs every 100 ms, with no grace period."""
        return self.orders(recovery_enabled=True, recovery_interval_seconds=0.1, recovery_grace_seconds=0, **overrides)


@pytest.fixture(scope="module")
async def inventory(migrated: Servers) -> AsyncIterator[httpx.AsyncClient]:
    """The inventory database read through an in-process app: it answers while the process is hung."""
    settings = InventorySettings(**settings_kwargs(migrated, "inventory"), **SMALL_POOL)
    async for client in app_client(create_inventory_app(settings)):
        yield client


@pytest.fixture(scope="module")
async def saga(migrated: Servers, inventory_proxy: HttpFaultProxy, users_proxy: HttpFaultProxy) -> Saga:
    return Saga(migrated, inventory_proxy, users_proxy)


@pytest.fixture(scope="module")
async def orders(saga: Saga) -> AsyncIterator[httpx.AsyncClient]:
    async with saga.orders() as client:
        yield client


@dataclass
class Tenant:
    orders: Caller
    inventory: Caller
    migrated: Servers

    async def product(self, stock: int) -> str:
        response = await self.inventory.post(
            "/products", json={"sku": unique("SAGA"), "name": "Mug", "price_cents": 300, "stock": stock}
        )
        assert response.status_code == 201, response.text
        product_id: str = response.json()["id"]
        return product_id

    async def stock(self, product_id: str) -> int:
        stock: int = (await self.inventory.get(f"/products/{product_id}")).json()["stock"]
        return stock

    def place(self, product_id: str, quantity: int, key: str, via: httpx.AsyncClient | None = None):
        caller = self.orders if via is None else self.orders.to(via, "orders")
        body = {"items": [{"product_id": product_id, "quantity": quantity}]}
        return caller.post("/orders", json=body, headers={"Idempotency-Key": key})

    async def reservations(self) -> list[dict]:
        items: list[dict] = (await self.inventory.get("/reservations", params={"limit": 200})).json()["items"]
        return items

    async def attempts(self) -> list[str]:
        rows = await db_fetch(
            self.migrated,
            "orders",
            "SELECT state FROM order_attempts WHERE tenant_id = $1 AND state <> 'done'",
            self.orders.identity.tenant_id,
        )
        return [row["state"] for row in rows]

    async def orders_stored(self) -> list[dict]:
        rows = await db_fetch(
            self.migrated,
            "orders",
            "SELECT id, status, reservation_status FROM orders WHERE tenant_id = $1",
            self.orders.identity.tenant_id,
        )
        return [dict(row) for row in rows]

    async def events(self) -> list[str]:
        rows = await db_fetch(
            self.migrated, "orders", "SELECT type FROM outbox WHERE tenant_id = $1", self.orders.identity.tenant_id
        )
        return [row["type"] for row in rows]

    async def settled(self, product_id: str, stock: int) -> bool:
        """The stock is back to `stock`, every reservation is released and no attempt is left."""
        reservations = await self.reservations()
        return (
            await self.stock(product_id) == stock
            and all(r["status"] == "released" for r in reservations)
            and await self.attempts() == []
        )

    async def placed_once(self, product_id: str, quantity: int, key: str, stock: int) -> None:
        """The same request with the same key now places exactly one order, taking the stock once."""
        placed = await self.place(product_id, quantity, key)
        assert placed.status_code == 201, placed.text
        again = await self.place(product_id, quantity, key)
        assert again.status_code == 201, again.text
        assert again.json()["id"] == placed.json()["id"]
        assert await self.stock(product_id) == stock - quantity
        stored = await self.orders_stored()
        assert [(o["id"], o["status"]) for o in stored] == [(placed.json()["id"], "confirmed")]
        assert await self.events() == ["order.created"]


@pytest.fixture
async def tenant(users_client, signer: IdentitySigner, orders, inventory, migrated: Servers) -> Tenant:
    admin = await bootstrap_tenant(users_client, signer)
    return Tenant(Caller(orders, signer, "orders", admin), Caller(inventory, signer, "inventory", admin), migrated)


def mismatched_reservation(quantity: int) -> bytes:
    """A well-formed reservation answer for another order than the one asked."""
    return json.dumps(
        {
            "id": str(uuid.uuid4()),
            "order_id": str(uuid.uuid4()),
            "status": "reserved",
            "items": [
                {"product_id": str(uuid.uuid4()), "sku": "X", "name": "X", "quantity": quantity, "unit_price_cents": 1}
            ],
        }
    ).encode()


# What the orders service hears after the inventory service reserved the stock, and what it answers.
WRONG_ANSWERS = {
    "5xx": ({"action": "forward_then_answer", "status": 500, "body": b'{"detail": "boom"}'}, 502),
    "garbage": ({"action": "forward_then_answer", "status": 201, "body": b"<html>not json"}, 502),
    "unexpected-4xx": ({"action": "forward_then_answer", "status": 418, "body": b"{}"}, 502),
    "json-not-a-reservation": ({"action": "forward_then_answer", "status": 201, "body": b'{"id": 1}'}, 502),
    "another-orders-reservation": (
        {"action": "forward_then_answer", "status": 201, "body": mismatched_reservation(2)},
        502,
    ),
    "connection-dropped": ({"action": "forward_then_drop"}, 503),
}


@pytest.mark.parametrize("wrong", list(WRONG_ANSWERS))
async def test_a_reservation_answer_that_cannot_be_trusted_releases_the_stock(
    tenant: Tenant, inventory_proxy: HttpFaultProxy, wrong: str
):
    fault, status = WRONG_ANSWERS[wrong]
    mug = await tenant.product(stock=10)
    key = unique("key")
    injected = inventory_proxy.add(*RESERVE, times=1, **fault)  # type: ignore[arg-type]  # fields of mixed types

    failed = await tenant.place(mug, 2, key)

    assert_problem(failed, status)
    assert injected.hits == 1
    # The stock really was reserved at the inventory service, and released before the answer.
    reservations = await tenant.reservations()
    assert [r["status"] for r in reservations] == ["released"]
    assert await tenant.stock(mug) == 10
    assert await tenant.orders_stored() == []
    assert await tenant.attempts() == []
    assert await tenant.events() == []
    await tenant.placed_once(mug, 2, key, stock=10)


async def test_a_reserve_call_that_times_out_after_taking_stock_releases_it(
    tenant: Tenant, saga: Saga, inventory_proxy: HttpFaultProxy
):
    mug = await tenant.product(stock=10)
    key = unique("key")
    inventory_proxy.add(*RESERVE, action="forward_then_hang", times=1)
    async with saga.orders(http_timeout_seconds=1) as impatient:
        failed = await tenant.place(mug, 3, key, via=impatient)
    assert_problem(failed, 504, "DOWNSTREAM_TIMEOUT")
    assert await tenant.settled(mug, 10)
    assert len(await tenant.reservations()) == 1
    assert await tenant.orders_stored() == []
    await tenant.placed_once(mug, 3, key, stock=10)


@pytest.mark.parametrize("release_status", [503, 418])
async def test_a_failed_compensation_is_finished_by_the_recovery_task(
    tenant: Tenant, saga: Saga, inventory_proxy: HttpFaultProxy, release_status: int
):
    mug = await tenant.product(stock=10)
    key = unique("key")
    inventory_proxy.add(*RESERVE, action="forward_then_answer", status=500, times=1)
    release = inventory_proxy.add(*RELEASE, action="answer", status=release_status)

    failed = await tenant.place(mug, 4, key)

    assert_problem(failed, 502, "DOWNSTREAM_BAD_RESPONSE")
    assert release.hits == 1
    # The stock is still held, and the attempt says so: its key is not free yet.
    assert await tenant.stock(mug) == 6
    assert await tenant.attempts() == ["abandoned"]
    assert_problem(await tenant.place(mug, 4, key), 409, "IDEMPOTENCY_KEY_IN_USE")

    inventory_proxy.clear()
    async with saga.recovering():
        await eventually(lambda: tenant.settled(mug, 10))
    assert await tenant.orders_stored() == []
    await tenant.placed_once(mug, 4, key, stock=10)


async def test_inventory_hung_by_sigstop_leaks_no_stock(tenant: Tenant, saga: Saga, inventory_process: ServiceProcess):
    """The inventory process stops mid-saga: the reserve and the release both time out, and both
    reach it when it resumes, in whichever order. Whichever lands, no stock stays held."""
    mug = await tenant.product(stock=10)
    key = unique("key")
    async with saga.orders(http_timeout_seconds=1) as impatient:
        inventory_process.pause()
        try:
            # Bounded, so that the process is resumed whatever happens here.
            failed = await asyncio.wait_for(tenant.place(mug, 5, key, via=impatient), 90)
        finally:
            inventory_process.resume()
    assert_problem(failed, 504, "DOWNSTREAM_TIMEOUT")
    assert await tenant.attempts() == ["abandoned"]

    # The reserve the orders service gave up on does reach the resumed process and takes the stock
    # (unless the release got there after it and gave it back already): there is something to leak.
    async def reserved() -> bool:
        return len(await tenant.reservations()) == 1

    await eventually(reserved)

    async with saga.recovering():
        await eventually(lambda: tenant.settled(mug, 10))
    assert [r["status"] for r in await tenant.reservations()] == ["released"]
    assert await tenant.orders_stored() == []
    await tenant.placed_once(mug, 5, key, stock=10)


async def test_inventory_killed_mid_reserve_leaks_no_stock(
    tenant: Tenant, saga: Saga, inventory_process: ServiceProcess, inventory_proxy: HttpFaultProxy
):
    """The inventory process takes the stock and is killed before its answer reaches the orders
    service (the fault injector holds the answer meanwhile, then drops the connection): the reserve
    fails, the compensation cannot reach the dead process, and the recovery task gives the stock back
    once the process is up again."""
    mug = await tenant.product(stock=10)
    key = unique("key")
    reserve = inventory_proxy.add(*RESERVE, action="forward_then_drop", hold_answer=True, times=1)
    placing = asyncio.create_task(tenant.place(mug, 2, key))
    await asyncio.wait_for(reserve.answered.wait(), 60)
    # The inventory service stored the reservation: the stock is held there.
    assert [r["status"] for r in await tenant.reservations()] == ["reserved"]
    assert await tenant.stock(mug) == 8
    await asyncio.to_thread(inventory_process.kill)
    reserve.release()
    failed = await placing
    assert_problem(failed, 503, "DOWNSTREAM_UNAVAILABLE")
    # The compensation could not reach the dead process either: the stock is still held.
    assert await tenant.attempts() == ["abandoned"]
    assert await tenant.stock(mug) == 8

    await asyncio.to_thread(inventory_process.start)
    saga.inventory_proxy.upstream = inventory_process.url
    async with saga.recovering():
        await eventually(lambda: tenant.settled(mug, 10))
    assert [r["status"] for r in await tenant.reservations()] == ["released"]
    assert await tenant.orders_stored() == []
    await tenant.placed_once(mug, 2, key, stock=10)


async def test_an_attempt_given_up_while_reserving_is_not_stored(
    tenant: Tenant, saga: Saga, inventory_proxy: HttpFaultProxy
):
    """The recovery task gives up an attempt whose reserve call is slow; when the reservation then
    succeeds, storing the order finds the attempt expired: 503, and the stock is released."""
    mug = await tenant.product(stock=10)
    key = unique("key")
    held = inventory_proxy.add(*RESERVE, action="forward", hold=True, times=1)
    refused_release = inventory_proxy.add(*RELEASE, action="answer", status=503)
    placing = asyncio.create_task(tenant.place(mug, 3, key))
    await asyncio.wait_for(held.seen.wait(), 60)
    async with saga.recovering(attempt_timeout_seconds=0.01):
        await asyncio.wait_for(refused_release.seen.wait(), 60)
        await eventually(lambda: _equals(tenant.attempts(), ["abandoned"]))
    inventory_proxy.faults.remove(refused_release)
    held.release()

    failed = await placing
    body = assert_problem(failed, 503, "ORDER_ATTEMPT_EXPIRED")
    assert failed.headers["retry-after"] == "1"
    assert "released" in body["detail"]
    assert await tenant.settled(mug, 10)
    assert [r["status"] for r in await tenant.reservations()] == ["released"]
    assert await tenant.orders_stored() == []
    assert await tenant.events() == []
    await tenant.placed_once(mug, 3, key, stock=10)


@pytest.mark.parametrize("lost", ["refused", "unexpected-answer", "answer-lost"])
async def test_an_unconfirmed_order_is_confirmed_by_the_recovery_task(
    tenant: Tenant, saga: Saga, inventory_proxy: HttpFaultProxy, lost: str
):
    mug = await tenant.product(stock=10)
    if lost == "refused":
        # The request's confirmation and the recovery task's first one fail; the next one lands.
        inventory_proxy.add(*CONFIRM, action="answer", status=503, times=2)
    elif lost == "unexpected-answer":
        inventory_proxy.add(*CONFIRM, action="answer", status=418, body=b"{}", times=1)
    else:
        inventory_proxy.add(*CONFIRM, action="forward_then_drop", times=1)

    placed = await tenant.place(mug, 2, unique("key"))

    # The order stands: the stock is taken, the confirmation is owed.
    assert placed.status_code == 201, placed.text
    assert placed.json()["status"] == "confirmed"
    assert await tenant.orders_stored() == [
        {"id": placed.json()["id"], "status": "confirmed", "reservation_status": "reserved"}
    ]
    expected = "confirmed" if lost == "answer-lost" else "reserved"
    assert [r["status"] for r in await tenant.reservations()] == [expected]
    assert await tenant.stock(mug) == 8

    async def confirmed() -> bool:
        stored = await tenant.orders_stored()
        return stored[0]["reservation_status"] == "confirmed"

    async with saga.recovering():
        await eventually(confirmed)
    assert [r["status"] for r in await tenant.reservations()] == ["confirmed"]
    assert await tenant.stock(mug) == 8
    assert await tenant.attempts() == []


async def test_recovery_leaves_an_order_whose_reservation_was_released_and_says_so(
    tenant: Tenant, saga: Saga, inventory_proxy: HttpFaultProxy, caplog: pytest.LogCaptureFixture
):
    """An order stored with its reservation unconfirmed, whose reservation someone then released at
    the inventory service: confirming is refused (409), and the recovery task logs it rather than
    confirming stock that is no longer held."""
    mug = await tenant.product(stock=10)
    inventory_proxy.add(*CONFIRM, action="answer", status=503, times=1)
    placed = await tenant.place(mug, 2, unique("key"))
    assert placed.status_code == 201, placed.text
    released = await tenant.inventory.post(f"/reservations/{placed.json()['reservation_id']}/release")
    assert released.status_code == 200, released.text
    assert await tenant.stock(mug) == 10

    with caplog.at_level(logging.ERROR, logger="portico.orders.recovery"):
        async with saga.recovering():
            await eventually(lambda: _true(any("was released" in r.getMessage() for r in caplog.records)))
    assert (await tenant.orders_stored())[0]["reservation_status"] == "reserved"
    assert [r["status"] for r in await tenant.reservations()] == ["released"]
    assert await tenant.stock(mug) == 10


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ({"action": "answer", "status": 500}, 502),
        ({"action": "answer", "status": 418, "body": b"{}"}, 502),
        ({"action": "answer", "status": 200, "body": b"[1, 2]"}, 502),
        ({"action": "answer", "status": 200, "body": b"not json"}, 502),
        ({"action": "drop"}, 503),
    ],
)
async def test_a_failed_user_check_takes_no_stock_and_frees_the_key(
    tenant: Tenant, users_proxy: HttpFaultProxy, fault: dict, status: int
):
    mug = await tenant.product(stock=10)
    key = unique("key")
    # Every time: a GET whose connection drops is retried once by the HTTP client.
    users_proxy.add(*USER_CHECK, **fault)
    assert_problem(await tenant.place(mug, 1, key), status)
    users_proxy.clear()
    assert await tenant.reservations() == []
    assert await tenant.attempts() == []
    await tenant.placed_once(mug, 1, key, stock=10)


async def test_an_attempt_that_cannot_be_dropped_is_cleared_by_the_recovery_task(
    tenant: Tenant, saga: Saga, migrated: Servers
):
    """The stock is refused, and dropping the attempt fails (the database refuses the delete): the
    key stays in use until the recovery task abandons the attempt and clears it."""
    mug = await tenant.product(stock=1)
    key = unique("key")
    tenant_id = tenant.orders.identity.tenant_id
    async with failing_statements(migrated.database_dsn("orders"), "order_attempts", "DELETE", tenant_id):
        assert_problem(await tenant.place(mug, 2, key), 409, "INSUFFICIENT_STOCK")
        assert await tenant.attempts() == ["pending"]
        assert_problem(await tenant.place(mug, 2, key), 409, "IDEMPOTENCY_KEY_IN_USE")
    async with saga.recovering(attempt_timeout_seconds=0.01):
        await eventually(lambda: _equals(tenant.attempts(), []))
    # Nothing was ever reserved; the recovery task's release left a marker only.
    assert [r["status"] for r in await tenant.reservations()] in ([], ["released"])
    assert await tenant.stock(mug) == 1
    adjusted = await tenant.inventory.post(f"/products/{mug}/stock-adjustments", json={"delta": 1, "reason": "restock"})
    assert adjusted.status_code == 201, adjusted.text
    placed = await tenant.place(mug, 2, unique("key"))
    assert placed.status_code == 201, placed.text
    assert await tenant.stock(mug) == 0


async def test_the_recovery_loop_survives_a_failing_round(
    tenant: Tenant, saga: Saga, migrated: Servers, inventory_proxy: HttpFaultProxy, caplog: pytest.LogCaptureFixture
):
    """A recovery round that raises (here: the attempts table refuses updates) is logged, and the
    next rounds go on and finish the work once the fault is gone."""
    mug = await tenant.product(stock=10)
    key = unique("key")
    inventory_proxy.add(*RESERVE, action="forward_then_answer", status=500, times=1)
    inventory_proxy.add(*RELEASE, action="answer", status=503, times=1)
    assert_problem(await tenant.place(mug, 4, key), 502)
    assert await tenant.stock(mug) == 6

    def failed_rounds() -> int:
        return sum(r.getMessage() == "order recovery round failed" for r in caplog.records)

    dsn = migrated.database_dsn("orders")
    with caplog.at_level(logging.ERROR, logger="portico.orders.recovery"):
        async with saga.recovering():
            async with failing_statements(dsn, "order_attempts", "DELETE"):
                await eventually(lambda: _true(failed_rounds() >= 2))
                assert await tenant.stock(mug) == 10  # released, but the attempt could not be dropped
                assert await tenant.attempts() == ["abandoned"]
            await eventually(lambda: tenant.settled(mug, 10))
    await tenant.placed_once(mug, 4, key, stock=10)


async def _true(value: object = True) -> bool:
    return bool(value)


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def test_a_reservation_released_before_its_confirmation_is_logged_and_the_order_stands(
    tenant: Tenant, inventory_proxy: HttpFaultProxy, caplog: pytest.LogCaptureFixture
):
    """Someone releases the reservation at the inventory service between the order being stored and
    its confirmation: confirming is refused (409), the placed order is answered as stored, and the
    inconsistency is logged as an error rather than hidden."""
    mug = await tenant.product(stock=10)
    held = inventory_proxy.add(*CONFIRM, action="forward", hold=True, times=1)
    with caplog.at_level(logging.ERROR, logger="portico.orders"):
        placing = asyncio.create_task(tenant.place(mug, 2, unique("key")))
        await asyncio.wait_for(held.seen.wait(), 60)
        [reservation] = await tenant.reservations()
        released = await tenant.inventory.post(f"/reservations/{reservation['id']}/release")
        assert released.status_code == 200, released.text
        held.release()
        placed = await placing
    assert placed.status_code == 201, placed.text
    assert inventory_proxy.forwarded[-1][2] == 409
    assert any("was released" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    assert (await tenant.orders_stored())[0]["reservation_status"] == "reserved"
    assert await tenant.stock(mug) == 10
