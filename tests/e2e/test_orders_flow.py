"""Products and orders through the gateway, with every process real, on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import httpx

from tests.infra import Servers
from tests.orders_support import PASSWORD, assert_problem, db_fetch, unique
from tests.plans import grant_plan, signup_plan


async def signup(
    gateway: httpx.AsyncClient, plan: str = "pro", infra: Servers | None = None
) -> tuple[dict, dict[str, str]]:
    """A tenant and its admin; answers the creation body and the admin's auth header. A plan sign-up
    does not offer is given on `infra`'s users database, as an operator gives it (`tests/plans.py`)."""
    email = f"{unique('admin')}@example.com"
    created = await gateway.post(
        "/v1/tenants",
        json={"name": "Shop", "plan": signup_plan(plan), "admin_email": email, "admin_password": PASSWORD},
    )
    assert created.status_code == 201, created.text
    await grant_plan(infra, created.json()["tenant"]["id"], plan)
    return created.json(), await login(gateway, email)


async def login(gateway: httpx.AsyncClient, email: str) -> dict[str, str]:
    token = await gateway.post("/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


async def new_product(gateway: httpx.AsyncClient, auth: dict, *, stock: int, price_cents: int = 1250) -> dict:
    response = await gateway.post(
        "/v1/products",
        json={"sku": unique("MUG"), "name": "Blue mug", "price_cents": price_cents, "stock": stock},
        headers=auth,
    )
    assert response.status_code == 201, response.text
    return response.json()


async def stock_of(gateway: httpx.AsyncClient, auth: dict, product_id: str) -> int:
    response = await gateway.get(f"/v1/products/{product_id}", headers=auth)
    assert response.status_code == 200, response.text
    return response.json()["stock"]


def one_of(product_id: str, quantity: int = 1) -> dict:
    return {"items": [{"product_id": product_id, "quantity": quantity}]}


async def test_product_order_cancel_walkthrough(gateway):
    created, auth = await signup(gateway)
    product = await new_product(gateway, auth, stock=10)
    assert {"id", "sku", "name", "price_cents", "stock"} <= set(product)
    adjusted = await gateway.post(
        f"/v1/products/{product['id']}/stock-adjustments", json={"delta": 5, "reason": "restock"}, headers=auth
    )
    assert adjusted.status_code == 201, adjusted.text
    assert adjusted.json()["stock_after"] == 15

    placed = await gateway.post(
        "/v1/orders", json=one_of(product["id"], 2), headers={**auth, "Idempotency-Key": unique("key")}
    )
    assert placed.status_code == 201, placed.text
    order = placed.json()
    assert {"id", "status", "items", "total_cents"} <= set(order)
    assert order["status"] == "confirmed"
    assert order["total_cents"] == 2500
    assert order["user_id"] == created["user"]["id"]
    assert await stock_of(gateway, auth, product["id"]) == 13
    assert (await gateway.get(f"/v1/orders/{order['id']}", headers=auth)).json()["status"] == "confirmed"
    assert [o["id"] for o in (await gateway.get("/v1/orders", headers=auth)).json()["items"]] == [order["id"]]

    cancelled = await gateway.post(f"/v1/orders/{order['id']}/cancel", headers=auth)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert await stock_of(gateway, auth, product["id"]) == 15
    assert_problem(await gateway.post(f"/v1/orders/{order['id']}/cancel", headers=auth), 409, "ORDER_ALREADY_CANCELLED")

    # A member reads products and places orders, but cannot change products.
    email = f"{unique('member')}@example.com"
    member = await gateway.post(
        "/v1/users", json={"email": email, "password": PASSWORD, "role": "member"}, headers=auth
    )
    assert member.status_code == 201, member.text
    member_auth = await login(gateway, email)
    assert (await gateway.get(f"/v1/products/{product['id']}", headers=member_auth)).status_code == 200
    refused = await gateway.post(
        "/v1/products", json={"sku": unique("S"), "name": "x", "price_cents": 1}, headers=member_auth
    )
    assert_problem(refused, 403, "INSUFFICIENT_SCOPE")
    refused = await gateway.post(
        f"/v1/products/{product['id']}/stock-adjustments", json={"delta": -15, "reason": "x"}, headers=member_auth
    )
    assert_problem(refused, 403, "INSUFFICIENT_SCOPE")
    theirs = await gateway.post("/v1/orders", json=one_of(product["id"]), headers=member_auth)
    assert theirs.status_code == 201, theirs.text
    assert theirs.json()["user_id"] == member.json()["id"]
    assert await stock_of(gateway, auth, product["id"]) == 14
    for path in ("/v1/products", "/v1/orders"):
        assert_problem(await gateway.get(path), 401)


async def test_200_concurrent_orders_never_oversell(gateway, migrated: Servers):
    created, auth = await signup(gateway, plan="enterprise", infra=migrated)
    product = await new_product(gateway, auth, stock=50, price_cents=700)
    results = await asyncio.gather(
        *(gateway.post("/v1/orders", json=one_of(product["id"]), headers=auth) for _ in range(200))
    )
    statuses = Counter(r.status_code for r in results)
    # Placed, refused for stock, or (a loaded machine) asked to come back later; never a 502.
    assert set(statuses) <= {201, 409, 503}, Counter(
        (r.status_code, r.json().get("error_code"), r.json().get("service")) for r in results if r.status_code != 201
    )
    for refused in (r for r in results if r.status_code == 409):
        assert refused.json()["error_code"] == "INSUFFICIENT_STOCK"
    for busy in (r for r in results if r.status_code == 503):
        assert int(busy.headers["retry-after"]) >= 1
        assert busy.headers["content-type"] == "application/problem+json"
    placed = statuses[201]
    # Every unit is sold unless a request was asked to come back later; none is sold twice.
    assert placed == 50 if not statuses[503] else placed <= 50
    assert await stock_of(gateway, auth, product["id"]) == 50 - placed

    listed = (await gateway.get("/v1/orders", params={"limit": 200}, headers=auth)).json()
    assert len(listed["items"]) == placed
    assert listed["next_cursor"] is None
    assert {o["id"] for o in listed["items"]} == {r.json()["id"] for r in results if r.status_code == 201}
    assert sum(o["total_cents"] for o in listed["items"]) == placed * 700

    tenant_id = created["tenant"]["id"]
    held = await db_fetch(
        migrated,
        "inventory",
        "SELECT status, count(*) AS n FROM reservations WHERE tenant_id = $1 GROUP BY status",
        tenant_id,
    )
    assert {row["status"]: row["n"] for row in held if row["status"] != "released"} == {"confirmed": placed}
    assert await db_fetch(migrated, "orders", "SELECT 1 FROM order_attempts WHERE tenant_id = $1", tenant_id) == []


async def test_no_route_reads_or_writes_across_tenants(gateway):
    _, owner = await signup(gateway)
    _, intruder = await signup(gateway)
    product = await new_product(gateway, owner, stock=5)
    order = (await gateway.post("/v1/orders", json=one_of(product["id"], 2), headers=owner)).json()
    before_product = (await gateway.get(f"/v1/products/{product['id']}", headers=owner)).json()
    before_order = (await gateway.get(f"/v1/orders/{order['id']}", headers=owner)).json()

    # Every route that takes an id, with the owner's id and with one that exists nowhere.
    routes = [
        ("GET", "/v1/products/{}", None, "PRODUCT_NOT_FOUND"),
        ("PATCH", "/v1/products/{}", {"name": "Mine now", "price_cents": 1}, "PRODUCT_NOT_FOUND"),
        ("POST", "/v1/products/{}/stock-adjustments", {"delta": -5, "reason": "theft"}, "PRODUCT_NOT_FOUND"),
        ("GET", "/v1/products/{}/stock-adjustments", None, "PRODUCT_NOT_FOUND"),
        ("GET", "/v1/orders/{}", None, "ORDER_NOT_FOUND"),
        ("POST", "/v1/orders/{}/cancel", None, "ORDER_NOT_FOUND"),
    ]
    for method, template, body, code in routes:
        own_id = product["id"] if "products" in template else order["id"]
        missing = str(uuid.uuid4())
        theirs = await gateway.request(method, template.format(own_id), json=body, headers=intruder)
        absent = await gateway.request(method, template.format(missing), json=body, headers=intruder)
        assert_problem(theirs, 404, code)
        assert_problem(absent, 404, code)
        assert theirs.json()["detail"].replace(own_id, "?") == absent.json()["detail"].replace(missing, "?")
    stolen = await gateway.post("/v1/orders", json=one_of(product["id"]), headers=intruder)
    assert_problem(stolen, 404, "PRODUCT_NOT_FOUND", field="items.0.product_id")
    # Lists show the intruder only its own (empty) tenant.
    assert (await gateway.get("/v1/products", headers=intruder)).json()["items"] == []
    assert (await gateway.get("/v1/orders", headers=intruder)).json()["items"] == []
    # Creating a product with the owner's sku is fine: skus are unique per tenant.
    own_sku = await gateway.post(
        "/v1/products", json={"sku": product["sku"], "name": "Same sku", "price_cents": 1}, headers=intruder
    )
    assert own_sku.status_code == 201

    assert (await gateway.get(f"/v1/products/{product['id']}", headers=owner)).json() == before_product
    assert (await gateway.get(f"/v1/orders/{order['id']}", headers=owner)).json() == before_order
    adjustments = (await gateway.get(f"/v1/products/{product['id']}/stock-adjustments", headers=owner)).json()
    assert adjustments["items"] == []


async def test_bad_input_is_a_problem_naming_the_field_and_changes_nothing(gateway):
    _, auth = await signup(gateway)
    product = await new_product(gateway, auth, stock=3, price_cents=400)
    orders = [
        ({"items": [{"product_id": product["id"], "quantity": 0}]}, 422, "items.0.quantity"),
        ({"items": [{"product_id": product["id"], "quantity": -1}]}, 422, "items.0.quantity"),
        ({"items": [{"product_id": str(uuid.uuid4()), "quantity": 1}]}, 404, "items.0.product_id"),
        ({"items": []}, 422, "items"),
        ({"items": [{"product_id": product["id"], "quantity": 4}]}, 409, "items.0.quantity"),
    ]
    for body, status, field in orders:
        assert_problem(await gateway.post("/v1/orders", json=body, headers=auth), status, field=field)
    products = [
        ({"sku": product["sku"], "name": "Dup", "price_cents": 1}, 409, "sku"),
        ({"sku": unique("S"), "name": "Cheap", "price_cents": -1}, 422, "price_cents"),
    ]
    for body, status, field in products:
        assert_problem(await gateway.post("/v1/products", json=body, headers=auth), status, field=field)
    below = await gateway.post(
        f"/v1/products/{product['id']}/stock-adjustments", json={"delta": -4, "reason": "x"}, headers=auth
    )
    assert_problem(below, 409, "INSUFFICIENT_STOCK", field="delta")
    assert_problem(await gateway.get("/v1/orders", params={"limit": 201}, headers=auth), 422, field="limit")
    assert_problem(await gateway.get("/v1/products", params={"cursor": "bogus"}, headers=auth), 422, field="cursor")
    assert_problem(
        await gateway.post("/v1/orders", content=b"{nope", headers={**auth, "content-type": "application/json"}),
        400,
        "MALFORMED_BODY",
    )
    assert (await gateway.get("/v1/products/..%2Fx", headers=auth)).status_code in (404, 422)

    assert (await gateway.get("/v1/orders", headers=auth)).json()["items"] == []
    listed = (await gateway.get("/v1/products", headers=auth)).json()["items"]
    assert [(p["id"], p["stock"], p["price_cents"]) for p in listed] == [(product["id"], 3, 400)]


async def test_an_idempotency_key_is_its_callers_own_through_the_stack(gateway):
    """A member who sends the admin's Idempotency-Key with the admin's body places an order of their
    own: the gateway and the orders service both scope the key to the caller."""
    created, admin_auth = await signup(gateway)
    product = await new_product(gateway, admin_auth, stock=10)
    email = f"{unique('member')}@example.com"
    member = await gateway.post(
        "/v1/users", json={"email": email, "password": PASSWORD, "role": "member"}, headers=admin_auth
    )
    assert member.status_code == 201, member.text
    member_auth = await login(gateway, email)

    key = {"Idempotency-Key": unique("shared-key")}
    admins = await gateway.post("/v1/orders", json=one_of(product["id"], 2), headers={**admin_auth, **key})
    assert admins.status_code == 201, admins.text
    theirs = await gateway.post("/v1/orders", json=one_of(product["id"], 2), headers={**member_auth, **key})
    assert theirs.status_code == 201, theirs.text
    assert "idempotent-replayed" not in theirs.headers
    assert theirs.json()["id"] != admins.json()["id"]
    assert theirs.json()["user_id"] == member.json()["id"]
    assert admins.json()["user_id"] == created["user"]["id"]
    assert await stock_of(gateway, admin_auth, product["id"]) == 6
    # Each one's repeat is their own answer again.
    again = await gateway.post("/v1/orders", json=one_of(product["id"], 2), headers={**member_auth, **key})
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == theirs.json()["id"]
