"""The inventory service on its own, in-process: on PostgreSQL, and on SQLite where the conditional
stock update has to hold under a different locking model."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from services.inventory.app import create_app
from services.inventory.settings import InventorySettings
from shared.contract import Identity
from shared.migrations import upgrade
from tests.conftest import FIXED_ADMISSION, INTERNAL_SECRET, ROOT, app_client, settings_kwargs
from tests.infra import Servers
from tests.orders_support import SMALL_POOL, Caller, assert_problem, tenant_identity, unique


@pytest.fixture(scope="module")
async def inventory(migrated: Servers) -> AsyncIterator[httpx.AsyncClient]:
    settings = InventorySettings(**settings_kwargs(migrated, "inventory"), **SMALL_POOL)
    async for client in app_client(create_app(settings)):
        yield client


@pytest.fixture(scope="module")
async def sqlite_inventory(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    """The embedded default: a SQLite file, migrated with Alembic like any other database."""
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('inventory') / 'inventory.db'}"
    await asyncio.to_thread(upgrade, ROOT / "services" / "inventory", url)
    settings = InventorySettings(
        environment="test", internal_token_secret=INTERNAL_SECRET, database_url=url, access_log=False, **FIXED_ADMISSION
    )
    async for client in app_client(create_app(settings)):
        yield client


@pytest.fixture(params=["postgresql", "sqlite"])
def either_backend(request: pytest.FixtureRequest) -> httpx.AsyncClient:
    client: httpx.AsyncClient = request.getfixturevalue(
        "inventory" if request.param == "postgresql" else "sqlite_inventory"
    )
    return client


@pytest.fixture
def admin(inventory: httpx.AsyncClient, signer) -> Caller:
    """An admin of a fresh tenant."""
    return Caller(inventory, signer, "inventory", tenant_identity())


async def new_product(caller: Caller, *, stock: int = 10, price_cents: int = 1250, sku: str | None = None) -> dict:
    response = await caller.post(
        "/products", json={"sku": sku or unique("SKU"), "name": "Blue mug", "price_cents": price_cents, "stock": stock}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def stock_of(caller: Caller, product_id: str) -> int:
    response = await caller.get(f"/products/{product_id}")
    assert response.status_code == 200, response.text
    return response.json()["stock"]


async def test_products_create_read_update_and_page(admin: Caller):
    created = [await new_product(admin, stock=i, price_cents=100 + i) for i in range(3)]
    assert {"id", "sku", "name", "price_cents", "stock", "created_at", "updated_at"} <= set(created[0])
    assert (await admin.get(f"/products/{created[0]['id']}")).json() == created[0]

    patched = await admin.patch(f"/products/{created[0]['id']}", json={"name": "Red mug", "price_cents": 999})
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "Red mug"
    assert patched.json()["price_cents"] == 999
    assert patched.json()["sku"] == created[0]["sku"]
    unchanged = await admin.patch(f"/products/{created[1]['id']}", json={})
    assert unchanged.status_code == 200
    assert unchanged.json()["name"] == "Blue mug"

    first = await admin.get("/products", params={"limit": 2})
    assert first.status_code == 200
    assert [p["id"] for p in first.json()["items"]] == [created[2]["id"], created[1]["id"]]
    assert first.json()["next_cursor"]
    second = await admin.get("/products", params={"limit": 2, "cursor": first.json()["next_cursor"]})
    assert [p["id"] for p in second.json()["items"]] == [created[0]["id"]]
    assert second.json()["next_cursor"] is None
    default = await admin.get("/products")
    assert len(default.json()["items"]) == 3


async def test_products_are_read_in_one_batch_by_id(admin: Caller, inventory, signer):
    mine = [await new_product(admin) for _ in range(3)]
    theirs = await new_product(Caller(inventory, signer, "inventory", tenant_identity()))
    wanted = [mine[2]["id"], theirs["id"], mine[0]["id"], "no-such-product", mine[2]["id"]]
    batch = await admin.get("/products", params={"ids": ",".join(wanted)})
    assert batch.status_code == 200, batch.text
    # In the order asked, once each; another tenant's product and unknown ids are left out.
    assert [p["id"] for p in batch.json()["items"]] == [mine[2]["id"], mine[0]["id"]]
    assert batch.json()["next_cursor"] is None
    for bad in ("", "a,,b", "bad id", ",".join(["x"] * 101)):
        assert_problem(await admin.get("/products", params={"ids": bad}), 422, field="ids")


async def test_bad_product_input_is_refused_and_changes_nothing(admin: Caller):
    product = await new_product(admin, stock=4, price_cents=500)
    other = await new_product(admin)
    cases = [
        ({"sku": unique("S"), "name": "x", "price_cents": -1, "stock": 1}, 422, "price_cents"),
        ({"sku": unique("S"), "name": "x", "price_cents": "10", "stock": 1}, 422, "price_cents"),
        ({"sku": unique("S"), "name": "x", "price_cents": 1.5, "stock": 1}, 422, "price_cents"),
        ({"sku": unique("S"), "name": "x", "price_cents": 10, "stock": -1}, 422, "stock"),
        ({"sku": "has space", "name": "x", "price_cents": 10}, 422, "sku"),
        ({"sku": unique("S"), "name": "   ", "price_cents": 10}, 422, "name"),
        ({"sku": unique("S"), "name": "a\u0000b", "price_cents": 10}, 422, "name"),
        ({"sku": unique("S"), "name": "x"}, 422, "price_cents"),
        ({"sku": unique("S"), "name": "x", "price_cents": 1, "colour": "red"}, 422, "colour"),
    ]
    for body, status, field in cases:
        assert_problem(await admin.post("/products", json=body), status, field=field)
    duplicate = await admin.post("/products", json={"sku": product["sku"], "name": "Dup", "price_cents": 1})
    assert_problem(duplicate, 409, "SKU_TAKEN", field="sku")

    patches = [
        ({"stock": 100}, 422, "stock"),
        ({"name": None}, 422, "name"),
        ({"price_cents": -5}, 422, "price_cents"),
        ({"sku": ""}, 422, "sku"),
    ]
    for body, status, field in patches:
        assert_problem(await admin.patch(f"/products/{product['id']}", json=body), status, field=field)
    taken = await admin.patch(f"/products/{product['id']}", json={"sku": other["sku"], "name": "Renamed"})
    assert_problem(taken, 409, "SKU_TAKEN", field="sku")
    malformed = await admin.post("/products", content=b"{nope", headers={"content-type": "application/json"})
    assert_problem(malformed, 400, "MALFORMED_BODY")

    listed = (await admin.get("/products")).json()["items"]
    assert len(listed) == 2
    assert (await admin.get(f"/products/{product['id']}")).json() == product


async def test_stock_adjustments_never_take_stock_below_zero(admin: Caller):
    product = await new_product(admin, stock=2)
    path = f"/products/{product['id']}/stock-adjustments"
    added = await admin.post(path, json={"delta": 5, "reason": "restock"})
    assert added.status_code == 201, added.text
    assert added.json()["stock_after"] == 7
    removed = await admin.post(path, json={"delta": -3, "reason": "damaged"})
    assert removed.json()["stock_after"] == 4

    too_many = await admin.post(path, json={"delta": -5, "reason": "oops"})
    body = assert_problem(too_many, 409, "INSUFFICIENT_STOCK", field="delta")
    assert body["errors"][0]["available"] == 4
    assert_problem(await admin.post(path, json={"delta": 0, "reason": "none"}), 422, field="delta")
    assert_problem(await admin.post(path, json={"delta": "3", "reason": "x"}), 422, field="delta")
    assert_problem(await admin.post(path, json={"delta": 1}), 422, field="reason")
    assert_problem(await admin.post(path, json={"delta": 1, "reason": "nul\u0000"}), 422, field="reason")
    assert_problem(await admin.post(path, json={"delta": 2_000_000_000, "reason": "x"}), 422, field="delta")
    missing = await admin.post(f"/products/{uuid.uuid4()}/stock-adjustments", json={"delta": 1, "reason": "x"})
    assert_problem(missing, 404, "PRODUCT_NOT_FOUND")
    assert await stock_of(admin, product["id"]) == 4

    history = (await admin.get(path)).json()
    assert [a["delta"] for a in history["items"]] == [-3, 5]
    assert history["next_cursor"] is None

    # Concurrent removals of one unit each against stock 4: exactly four succeed.
    results = await asyncio.gather(*(admin.post(path, json={"delta": -1, "reason": "sale"}) for _ in range(12)))
    assert Counter(r.status_code for r in results) == {201: 4, 409: 8}
    assert await stock_of(admin, product["id"]) == 0


def reserve_body(order_id: str, *items: tuple[str, int]) -> dict:
    return {"order_id": order_id, "items": [{"product_id": p, "quantity": q} for p, q in items]}


async def test_reservation_is_all_or_nothing(admin: Caller):
    mug = await new_product(admin, stock=5, price_cents=300)
    pen = await new_product(admin, stock=1, price_cents=120)
    short = await admin.post("/reservations", json=reserve_body("order-1", (mug["id"], 2), (pen["id"], 2)))
    body = assert_problem(short, 409, "INSUFFICIENT_STOCK", field="items.1.quantity")
    assert body["errors"][0]["available"] == 1
    unknown = await admin.post("/reservations", json=reserve_body("order-2", (mug["id"], 2), (str(uuid.uuid4()), 1)))
    assert_problem(unknown, 404, "PRODUCT_NOT_FOUND", field="items.1.product_id")
    zero = await admin.post("/reservations", json=reserve_body("order-3", (mug["id"], 0)))
    assert_problem(zero, 422, field="items.0.quantity")
    empty = await admin.post("/reservations", json={"order_id": "order-4", "items": []})
    assert_problem(empty, 422, field="items")
    twice = await admin.post("/reservations", json=reserve_body("order-5", (mug["id"], 1), (mug["id"], 1)))
    assert_problem(twice, 422, field="items.1.product_id")
    assert await stock_of(admin, mug["id"]) == 5
    assert await stock_of(admin, pen["id"]) == 1

    ok = await admin.post("/reservations", json=reserve_body("order-1", (pen["id"], 1), (mug["id"], 2)))
    assert ok.status_code == 201, ok.text
    reservation = ok.json()
    assert reservation["status"] == "reserved"
    assert reservation["order_id"] == "order-1"
    assert [(i["product_id"], i["quantity"], i["unit_price_cents"]) for i in reservation["items"]] == [
        (pen["id"], 1, 120),
        (mug["id"], 2, 300),
    ]
    assert await stock_of(admin, mug["id"]) == 3
    assert await stock_of(admin, pen["id"]) == 0


async def test_reserving_again_for_the_same_order_takes_nothing_twice(admin: Caller):
    mug = await new_product(admin, stock=5)
    body = reserve_body("order-again", (mug["id"], 2))
    first = await admin.post("/reservations", json=body)
    again = await admin.post("/reservations", json=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert await stock_of(admin, mug["id"]) == 3
    different = await admin.post("/reservations", json=reserve_body("order-again", (mug["id"], 3)))
    assert_problem(different, 409, "RESERVATION_MISMATCH")
    assert await stock_of(admin, mug["id"]) == 3


async def test_release_returns_stock_exactly_once(admin: Caller):
    mug = await new_product(admin, stock=5)
    reservation = (await admin.post("/reservations", json=reserve_body("order-r", (mug["id"], 3)))).json()
    assert await stock_of(admin, mug["id"]) == 2

    confirmed = await admin.post(f"/reservations/{reservation['id']}/confirm")
    assert confirmed.json()["status"] == "confirmed"
    assert (await admin.post(f"/reservations/{reservation['id']}/confirm")).status_code == 200

    releases = await asyncio.gather(
        *(admin.post(f"/reservations/{reservation['id']}/release") for _ in range(10)),
        *(admin.post("/orders/order-r/reservation/release") for _ in range(10)),
    )
    assert {r.status_code for r in releases} == {200}
    assert {r.json()["status"] for r in releases} == {"released"}
    assert await stock_of(admin, mug["id"]) == 5

    late_confirm = await admin.post(f"/reservations/{reservation['id']}/confirm")
    assert_problem(late_confirm, 409, "RESERVATION_RELEASED")
    again = await admin.post("/reservations", json=reserve_body("order-r", (mug["id"], 3)))
    assert_problem(again, 409, "RESERVATION_RELEASED")
    assert await stock_of(admin, mug["id"]) == 5
    listed = (await admin.get("/reservations", params={"order_id": "order-r"})).json()["items"]
    assert [r["status"] for r in listed] == ["released"]


async def test_a_release_that_overtakes_its_reserve_call_refuses_it(admin: Caller):
    """The orders service releases by order id when it never learnt whether its reserve call
    landed; a reserve call still on its way must then take nothing."""
    mug = await new_product(admin, stock=5)
    released = await admin.post("/orders/order-late/reservation/release")
    assert released.status_code == 200
    assert released.json()["status"] == "released"
    assert released.json()["items"] == []
    late = await admin.post("/reservations", json=reserve_body("order-late", (mug["id"], 2)))
    assert_problem(late, 409, "RESERVATION_RELEASED")
    assert await stock_of(admin, mug["id"]) == 5
    assert_problem(await admin.post(f"/reservations/{uuid.uuid4()}/release"), 404, "RESERVATION_NOT_FOUND")
    assert_problem(await admin.post("/orders/a.b/reservation/release"), 422, field="order_id")


async def concurrent_orders_of_one(caller: Caller, product_id: str, count: int) -> Counter:
    results = await asyncio.gather(
        *(caller.post("/reservations", json=reserve_body(unique("order"), (product_id, 1))) for _ in range(count))
    )
    return Counter(r.status_code for r in results)


async def test_concurrent_reservations_never_oversell(either_backend, signer):
    caller = Caller(either_backend, signer, "inventory", tenant_identity())
    mug = await new_product(caller, stock=50)
    assert await concurrent_orders_of_one(caller, mug["id"], 200) == {201: 50, 409: 150}
    assert await stock_of(caller, mug["id"]) == 0
    reservations = (await caller.get("/reservations", params={"limit": 200})).json()["items"]
    assert len(reservations) == 50
    assert sum(r["items"][0]["quantity"] for r in reservations) == 50


async def test_multi_item_reservations_in_any_order_neither_deadlock_nor_oversell(either_backend, signer):
    caller = Caller(either_backend, signer, "inventory", tenant_identity())
    mug = await new_product(caller, stock=30)
    pen = await new_product(caller, stock=30)
    pairs = [(mug["id"], pen["id"]) if i % 2 else (pen["id"], mug["id"]) for i in range(80)]
    results = await asyncio.gather(
        *(caller.post("/reservations", json=reserve_body(unique("o"), (a, 1), (b, 1))) for a, b in pairs)
    )
    assert Counter(r.status_code for r in results) == {201: 30, 409: 50}
    assert await stock_of(caller, mug["id"]) == await stock_of(caller, pen["id"]) == 0


async def test_another_tenants_ids_answer_404_like_missing_ones(admin: Caller):
    mug = await new_product(admin, stock=5)
    reservation = (await admin.post("/reservations", json=reserve_body("order-t", (mug["id"], 1)))).json()
    intruder = admin.as_(tenant_identity())
    for their_id, missing_id, call in [
        (mug["id"], str(uuid.uuid4()), lambda pid: intruder.get(f"/products/{pid}")),
        (mug["id"], str(uuid.uuid4()), lambda pid: intruder.patch(f"/products/{pid}", json={"name": "Mine"})),
        (
            mug["id"],
            str(uuid.uuid4()),
            lambda pid: intruder.post(f"/products/{pid}/stock-adjustments", json={"delta": -5, "reason": "x"}),
        ),
        (mug["id"], str(uuid.uuid4()), lambda pid: intruder.get(f"/products/{pid}/stock-adjustments")),
        (
            mug["id"],
            str(uuid.uuid4()),
            lambda pid: intruder.post("/reservations", json=reserve_body(unique("o"), (pid, 1))),
        ),
        (reservation["id"], str(uuid.uuid4()), lambda rid: intruder.get(f"/reservations/{rid}")),
        (reservation["id"], str(uuid.uuid4()), lambda rid: intruder.post(f"/reservations/{rid}/confirm")),
        (reservation["id"], str(uuid.uuid4()), lambda rid: intruder.post(f"/reservations/{rid}/release")),
    ]:
        theirs, missing = await call(their_id), await call(missing_id)
        assert theirs.status_code == missing.status_code == 404, (theirs.text, missing.text)
        assert theirs.json()["error_code"] == missing.json()["error_code"]
        assert theirs.json()["detail"].replace(their_id, "?") == missing.json()["detail"].replace(missing_id, "?")
    # Releasing "their" order id only leaves a marker in the intruder's own tenant.
    assert (await intruder.post("/orders/order-t/reservation/release")).json()["items"] == []
    assert (await intruder.get("/products")).json()["items"] == []
    assert [r["items"] for r in (await intruder.get("/reservations")).json()["items"]] == [[]]
    assert await stock_of(admin, mug["id"]) == 4
    assert (await admin.get(f"/reservations/{reservation['id']}")).json()["status"] == "reserved"
    assert (await admin.get(f"/products/{mug['id']}")).json()["name"] == "Blue mug"


async def test_scopes_and_identity_are_enforced(admin: Caller, inventory: httpx.AsyncClient):
    mug = await new_product(admin)
    member = admin.as_(
        Identity(subject=str(uuid.uuid4()), tenant_id=admin.identity.tenant_id, scopes=frozenset({"products:read"}))
    )
    assert (await member.get(f"/products/{mug['id']}")).status_code == 200
    refused = await member.post("/products", json={"sku": unique("S"), "name": "x", "price_cents": 1})
    assert_problem(refused, 403, "INSUFFICIENT_SCOPE")
    assert_problem(await member.patch(f"/products/{mug['id']}", json={"name": "y"}), 403, "INSUFFICIENT_SCOPE")
    assert_problem(
        await member.post("/reservations", json=reserve_body("o-scope", (mug["id"], 1))), 403, "INSUFFICIENT_SCOPE"
    )
    assert_problem(await inventory.get("/products"), 401, "MISSING_INTERNAL_IDENTITY")
    assert_problem(await admin.get("/products", params={"cursor": "not-a-cursor"}), 422, "INVALID_CURSOR", "cursor")
    # Forged cursors: a NUL in the id, a time that overflows once converted to UTC.
    for forged in (["2024-01-01T00:00:00+00:00", "a\u0000"], ["9999-12-31T23:59:59-14:00", "a"]):
        cursor = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
        assert_problem(await admin.get("/products", params={"cursor": cursor}), 422, "INVALID_CURSOR", "cursor")
    assert_problem(await admin.get("/products", params={"limit": 201}), 422, field="limit")
    assert_problem(await admin.get("/products", params={"limit": 0}), 422, field="limit")
    assert (await admin.get("/products", params={"limit": 200})).status_code == 200
    assert await stock_of(admin, mug["id"]) == 10


async def released_marker_story(client: httpx.AsyncClient, signer) -> list[tuple]:
    """A release before its reserve call, then a reserve and release of another order: what each step
    answered, and the stock at the end."""
    caller = Caller(client, signer, "inventory", tenant_identity())
    mug = await new_product(caller, stock=3)
    story: list[tuple] = []
    marker = await caller.post("/orders/o-1/reservation/release")
    story.append(("release before reserve", marker.status_code, marker.json()["status"]))
    late = await caller.post("/reservations", json=reserve_body("o-1", (mug["id"], 1)))
    story.append(("late reserve", late.status_code, late.json()["error_code"]))
    story.append(("stock", await stock_of(caller, mug["id"])))
    ok = await caller.post("/reservations", json=reserve_body("o-2", (mug["id"], 3)))
    story.append(("reserve", ok.status_code, ok.json()["status"]))
    story.append(("stock", await stock_of(caller, mug["id"])))
    released = await caller.post(f"/reservations/{ok.json()['id']}/release")
    story.append(("release", released.status_code, released.json()["status"]))
    again = await caller.post("/orders/o-2/reservation/release")
    story.append(("release again", again.status_code, again.json()["status"]))
    story.append(("stock", await stock_of(caller, mug["id"])))
    return story


async def test_sqlite_and_postgres_agree_on_a_released_marker(sqlite_inventory, inventory, signer):
    expected = [
        ("release before reserve", 200, "released"),
        ("late reserve", 409, "RESERVATION_RELEASED"),
        ("stock", 3),
        ("reserve", 201, "reserved"),
        ("stock", 0),
        ("release", 200, "released"),
        ("release again", 200, "released"),
        ("stock", 3),
    ]
    assert await released_marker_story(sqlite_inventory, signer) == expected
    assert await released_marker_story(inventory, signer) == expected


# ---------------------------------------------------------------- the stock maximum

MAX_STOCK = 1_000_000_000


async def test_a_stock_adjustment_above_the_maximum_is_refused_and_changes_nothing(either_backend, signer):
    admin = Caller(either_backend, signer, "inventory", tenant_identity())
    mug = await new_product(admin, stock=MAX_STOCK - 2)
    path = f"/products/{mug['id']}/stock-adjustments"
    over = await admin.post(path, json={"delta": 3, "reason": "count"})
    body = assert_problem(over, 409, "STOCK_LIMIT_EXCEEDED", field="delta")
    assert body["errors"][0]["available"] == MAX_STOCK - 2
    assert await stock_of(admin, mug["id"]) == MAX_STOCK - 2
    assert (await admin.get(path)).json()["items"] == []
    # Exactly to the maximum is allowed; one more is not.
    filled = await admin.post(path, json={"delta": 2, "reason": "count"})
    assert filled.status_code == 201, filled.text
    assert filled.json()["stock_after"] == MAX_STOCK
    assert_problem(await admin.post(path, json={"delta": 1, "reason": "count"}), 409, "STOCK_LIMIT_EXCEEDED")
    # A delta past the maximum on its own is a malformed request.
    assert_problem(await admin.post(path, json={"delta": MAX_STOCK + 1, "reason": "x"}), 422, field="delta")
    assert await stock_of(admin, mug["id"]) == MAX_STOCK
    assert len((await admin.get(path)).json()["items"]) == 1


async def test_a_release_never_takes_stock_past_the_maximum(either_backend, signer):
    admin = Caller(either_backend, signer, "inventory", tenant_identity())
    mug = await new_product(admin, stock=10_000)
    held = (await admin.post("/reservations", json=reserve_body("order-max", (mug["id"], 10_000)))).json()
    assert await stock_of(admin, mug["id"]) == 0
    raised = await admin.post(f"/products/{mug['id']}/stock-adjustments", json={"delta": MAX_STOCK, "reason": "count"})
    assert raised.status_code == 201, raised.text
    # Cancelling the order puts its units back: they no longer fit.
    released = await admin.post("/orders/order-max/reservation/release")
    assert released.status_code == 200, released.text
    assert released.json()["status"] == "released"
    assert await stock_of(admin, mug["id"]) == MAX_STOCK
    history = (await admin.get(f"/products/{mug['id']}/stock-adjustments")).json()["items"]
    written_off = history[0]
    assert written_off["delta"] == -10_000
    assert written_off["stock_after"] == MAX_STOCK
    assert "order-max" in written_off["reason"]
    # Released once, written off once.
    assert (await admin.post(f"/reservations/{held['id']}/release")).status_code == 200
    assert len((await admin.get(f"/products/{mug['id']}/stock-adjustments")).json()["items"]) == 2

    # Room for part of a release: filled up to the maximum, the rest written off.
    pen = await new_product(admin, stock=10)
    await admin.post("/reservations", json=reserve_body("order-part", (pen["id"], 10)))
    await admin.post(f"/products/{pen['id']}/stock-adjustments", json={"delta": MAX_STOCK - 4, "reason": "count"})
    await admin.post("/orders/order-part/reservation/release")
    assert await stock_of(admin, pen["id"]) == MAX_STOCK
    assert (await admin.get(f"/products/{pen['id']}/stock-adjustments")).json()["items"][0]["delta"] == -6
    # A release that fits leaves no trace in the adjustments.
    cup = await new_product(admin, stock=10)
    await admin.post("/reservations", json=reserve_body("order-fits", (cup["id"], 4)))
    await admin.post("/orders/order-fits/reservation/release")
    assert await stock_of(admin, cup["id"]) == 10
    assert (await admin.get(f"/products/{cup['id']}/stock-adjustments")).json()["items"] == []


async def test_the_database_refuses_stock_outside_its_bounds(admin: Caller, migrated: Servers):
    mug = await new_product(admin, stock=1)
    conn = await asyncpg.connect(migrated.database_dsn("inventory"))
    try:
        for stock in (MAX_STOCK + 1, -1):
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute("UPDATE products SET stock = $1 WHERE id = $2", stock, mug["id"])
        await conn.execute("UPDATE products SET stock = $1 WHERE id = $2", MAX_STOCK, mug["id"])
    finally:
        await conn.close()


async def test_the_migration_brings_stock_above_the_maximum_down_and_says_so(migrated: Servers):
    name = f"{migrated.database_name('inventory')}_bounds"
    admin_conn = await asyncpg.connect(migrated.pg_admin_dsn)
    await admin_conn.execute(f'CREATE DATABASE "{name}"')
    dsn = migrated.database_dsn("inventory").rsplit("/", 1)[0] + f"/{name}"
    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        await asyncio.to_thread(upgrade, ROOT / "services" / "inventory", url, "0001")
        conn = await asyncpg.connect(dsn)
        try:
            insert = (
                "INSERT INTO products (id, tenant_id, sku, name, price_cents, stock, created_at, updated_at) "
                "VALUES ($1, 't', $2, 'Mug', 100, $3, now(), now())"
            )
            await conn.execute(insert, "over", "S-1", MAX_STOCK + 10_000)
            await conn.execute(insert, "fine", "S-2", 7)
            await asyncio.to_thread(upgrade, ROOT / "services" / "inventory", url)
            stocks = dict(await conn.fetch("SELECT id, stock FROM products"))
            assert stocks == {"over": MAX_STOCK, "fine": 7}
            (row,) = await conn.fetch("SELECT product_id, delta, stock_after FROM stock_adjustments")
            assert tuple(row) == ("over", -10_000, MAX_STOCK)
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute("UPDATE products SET stock = stock + 1 WHERE id = 'over'")
        finally:
            await conn.close()
    finally:
        await admin_conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin_conn.close()
