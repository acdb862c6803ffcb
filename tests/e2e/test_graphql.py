"""POST /graphql with every process real: the same data as REST through one schema, one batched
inventory call for the products of many orders, REST error codes in extensions.code, per-field
scopes, the depth, alias and cost bounds, REST's page limits, and mutation documents that keep what
they did when one of their mutations fails, sending each mutation's own Idempotency-Key on."""

from __future__ import annotations

import re
import uuid

import httpx

from gateway.graphql.context import field_idempotency_key
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT
from tests.edge_support import Tenant, concurrently, gateway_settings, in_process_gateway, signup

# An order holds up to a hundred lines, each with its product: three orders cost 1,819 of the 2,000.
ORDERS_WITH_PRODUCTS = """
query Orders($limit: Int!) {
  orders(limit: $limit) {
    nextCursor
    items { id status totalCents items { quantity product { id sku name priceCents } } }
  }
}
"""


async def gql(client: httpx.AsyncClient, headers: dict[str, str], query: str, **variables) -> dict:
    response = await client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def shop(gateway: httpx.AsyncClient) -> tuple[Tenant, list[dict], list[dict]]:
    tenant = await signup(gateway)
    products = []
    for sku in ("GQL-MUG", "GQL-PEN"):
        created = await gateway.post(
            "/v1/products",
            json={"sku": f"{sku}-{tenant.id[:6]}", "name": sku, "price_cents": 250, "stock": 50},
            headers=tenant.auth,
        )
        assert created.status_code == 201, created.text
        products.append(created.json())
    orders = []
    for lines in ([(0, 1)], [(0, 2), (1, 1)], [(1, 3)]):
        body = {"items": [{"product_id": products[i]["id"], "quantity": q} for i, q in lines]}
        placed = await gateway.post("/v1/orders", json=body, headers=tenant.auth)
        assert placed.status_code == 201, placed.text
        orders.append(placed.json())
    return tenant, products, orders


async def inventory_product_reads(stack) -> float:
    metrics = httpx.get(stack.url("inventory") + "/metrics").text
    found = re.search(r'^http_requests_total\{method="GET",route="/products",status="200"\} (\S+)$', metrics, re.M)
    return float(found[1]) if found else 0.0


async def test_the_schema_answers_what_rest_answers(gateway):
    tenant, products, orders = await shop(gateway)
    me = await gql(gateway, tenant.auth, "{ me { id email role tenantId } }")
    assert me == {
        "data": {"me": {"id": tenant.admin_id, "email": tenant.email, "role": "admin", "tenantId": tenant.id}}
    }
    user = await gql(gateway, tenant.auth, "query($id: ID!) { user(id: $id) { email } }", id=tenant.admin_id)
    assert user["data"]["user"]["email"] == tenant.email

    page = await gql(gateway, tenant.auth, "{ products(limit: 1) { items { id sku priceCents stock } nextCursor } }")
    assert page["data"]["products"]["items"] == [
        {"id": products[1]["id"], "sku": products[1]["sku"], "priceCents": 250, "stock": 50 - 4}
    ]
    cursor = page["data"]["products"]["nextCursor"]
    rest = await gateway.get("/v1/products", params={"limit": 1, "cursor": cursor}, headers=tenant.auth)
    after = await gql(
        gateway, tenant.auth, "query($c: String) { products(limit: 1, cursor: $c) { items { id } } }", c=cursor
    )
    assert [p["id"] for p in after["data"]["products"]["items"]] == [p["id"] for p in rest.json()["items"]]

    answer = await gql(gateway, tenant.auth, ORDERS_WITH_PRODUCTS, limit=3)
    got = answer["data"]["orders"]["items"]
    assert [o["id"] for o in got] == [o["id"] for o in reversed(orders)]
    assert got[1]["totalCents"] == orders[1]["total_cents"]
    assert [(line["quantity"], line["product"]["sku"]) for line in got[1]["items"]] == [
        (2, products[0]["sku"]),
        (1, products[1]["sku"]),
    ]
    one = await gql(gateway, tenant.auth, "query($id: ID!) { order(id: $id) { id status } }", id=orders[0]["id"])
    assert one["data"]["order"] == {"id": orders[0]["id"], "status": "confirmed"}


async def test_the_products_of_many_orders_cost_one_inventory_call(stack, gateway):
    tenant, _, _ = await shop(gateway)
    before = await inventory_product_reads(stack)
    answer = await gql(gateway, tenant.auth, ORDERS_WITH_PRODUCTS, limit=3)
    assert "errors" not in answer, answer
    assert sum(len(o["items"]) for o in answer["data"]["orders"]["items"]) == 4
    assert await inventory_product_reads(stack) == before + 1


async def test_mutations_and_rest_error_codes(gateway):
    tenant, products, _ = await shop(gateway)
    created = await gql(
        gateway,
        tenant.auth,
        "mutation($p: ID!) { createOrder(items: [{productId: $p, quantity: 2}]) { id status totalCents } }",
        p=products[0]["id"],
    )
    order = created["data"]["createOrder"]
    assert order["status"] == "confirmed"
    assert order["totalCents"] == 500
    cancel = "mutation($id: ID!) { cancelOrder(id: $id) { id status } }"
    assert (await gql(gateway, tenant.auth, cancel, id=order["id"]))["data"]["cancelOrder"]["status"] == "cancelled"
    again = await gql(gateway, tenant.auth, cancel, id=order["id"])
    assert again["errors"][0]["extensions"]["code"] == "ORDER_ALREADY_CANCELLED"
    missing = await gql(gateway, tenant.auth, '{ order(id: "nope") { id } }')
    assert missing["errors"][0]["extensions"]["code"] == "ORDER_NOT_FOUND"
    too_many = await gql(
        gateway,
        tenant.auth,
        "mutation($p: ID!) { createOrder(items: [{productId: $p, quantity: 1000}]) { id } }",
        p=products[0]["id"],
    )
    assert too_many["errors"][0]["extensions"]["code"] == "INSUFFICIENT_STOCK"
    # Another tenant's order is as missing as an unknown one.
    other = await signup(gateway)
    theirs = await gql(gateway, other.auth, "query($id: ID!) { order(id: $id) { id } }", id=order["id"])
    assert theirs["errors"][0]["extensions"]["code"] == "ORDER_NOT_FOUND"


async def test_scopes_are_enforced_per_field_and_credentials_as_on_rest(gateway):
    tenant, products, _ = await shop(gateway)
    key = await gateway.post("/v1/api-keys", json={"name": "gql", "scopes": ["orders:read"]}, headers=tenant.auth)
    headers = {"X-API-Key": key.json()["api_key"]}
    answer = await gql(gateway, headers, ORDERS_WITH_PRODUCTS, limit=3)
    # The orders come; each line's product is refused, with the scope it needs.
    assert len(answer["data"]["orders"]["items"]) == 3
    assert answer["data"]["orders"]["items"][0]["items"][0]["product"] is None
    assert {e["extensions"]["code"] for e in answer["errors"]} == {"INSUFFICIENT_SCOPE"}
    assert answer["errors"][0]["extensions"]["required_scope"] == "products:read"
    write = await gql(
        gateway,
        headers,
        "mutation($p: ID!) { createOrder(items: [{productId: $p, quantity: 1}]) { id } }",
        p=products[0]["id"],
    )
    assert write["data"] == {"createOrder": None}
    assert write["errors"][0]["extensions"]["code"] == "INSUFFICIENT_SCOPE"
    anonymous = await gateway.post("/graphql", json={"query": "{ me { id } }"})
    assert anonymous.status_code == 401
    assert anonymous.json()["error_code"] == "AUTHENTICATION_REQUIRED"


async def test_depth_aliases_and_cost_are_bounded(gateway):
    tenant = await signup(gateway)
    deep = "{ orders(limit: 1) { items { items { product { id } } } } }"
    assert "errors" not in await gql(gateway, tenant.auth, deep)
    # Nine fields nested (the schema has four levels; the bound is checked before the names are).
    too_deep = "{ me { a { b { c { d { e { f { g { h { id } } } } } } } } } }"
    refused = await gql(gateway, tenant.auth, too_deep)
    assert refused.get("data") is None
    assert refused["errors"][0]["extensions"] == {"code": "QUERY_TOO_DEEP", "depth": 9, "max_depth": 8}
    assert "exceeds maximum operation depth of 8" in refused["errors"][0]["message"]
    aliases = "{ " + " ".join(f"m{i}: me {{ id }}" for i in range(11)) + " }"
    refused = await gql(gateway, tenant.auth, aliases)
    assert refused.get("data") is None
    assert "aliases" in refused["errors"][0]["message"]
    assert refused["errors"][0]["extensions"]["code"] == "TOO_MANY_ALIASES"
    repeated = "{ " + " ".join(["me { id }"] * 495) + " }"
    refused = await gql(gateway, tenant.auth, repeated)
    assert refused.get("data") is None
    assert refused["errors"][0]["extensions"]["code"] == "FIELD_REPEATED_TOO_OFTEN"
    costly = "{ orders(limit: 100) { items { id status totalCents userId items { quantity unitPriceCents "
    costly += "lineTotalCents product { id sku name priceCents stock } } } } "
    costly += "products(limit: 100) { items { id sku name priceCents stock } } }"  # 90,601 + 601
    too_costly = await gql(gateway, tenant.auth, costly)
    assert too_costly["errors"][0]["extensions"]["code"] == "QUERY_TOO_COSTLY"
    fragments = "fragment F on Query { me { id } } query { ...F }"
    assert (await gql(gateway, tenant.auth, fragments))["data"]["me"]["id"] == tenant.admin_id


PLACE_THREE = """
mutation Place($p: ID!) {
  first: createOrder(items: [{productId: $p, quantity: 1}]) { id status totalCents }
  second: createOrder(items: [{productId: $p, quantity: 1}]) { id status totalCents }
  third: createOrder(items: [{productId: $p, quantity: 1}]) { id status totalCents }
}
"""


async def product_with_credit_for_two(gateway: httpx.AsyncClient, tenant: Tenant) -> dict:
    """A product of 400 cents, and the tenant's admin allowed 1,000 cents of open orders: two fit."""
    patched = await gateway.patch(
        f"/v1/users/{tenant.admin_id}", json={"credit_limit_cents": 1000}, headers=tenant.auth
    )
    assert patched.status_code == 200, patched.text
    created = await gateway.post(
        "/v1/products",
        json={"sku": f"GQL-CREDIT-{uuid.uuid4().hex[:8]}", "name": "Lamp", "price_cents": 400, "stock": 50},
        headers=tenant.auth,
    )
    assert created.status_code == 201, created.text
    return created.json()


async def test_a_failing_mutation_keeps_the_orders_the_others_placed(gateway):
    tenant = await signup(gateway)
    product = await product_with_credit_for_two(gateway, tenant)
    headers = {**tenant.auth, "Idempotency-Key": f"place-{uuid.uuid4().hex}"}
    response = await gateway.post(
        "/graphql", json={"query": PLACE_THREE, "variables": {"p": product["id"]}}, headers=headers
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    placed = [answer["data"]["first"], answer["data"]["second"]]
    assert [order["status"] for order in placed] == ["confirmed", "confirmed"]
    assert answer["data"]["third"] is None
    [error] = answer["errors"]
    assert error["path"] == ["third"]
    assert error["extensions"]["code"] == "CREDIT_LIMIT_EXCEEDED"
    # What REST sees: exactly the two orders the answer names, and their stock taken.
    orders = (await gateway.get("/v1/orders", headers=tenant.auth)).json()["items"]
    assert sorted(o["id"] for o in orders) == sorted(o["id"] for o in placed)
    stock = (await gateway.get(f"/v1/products/{product['id']}", headers=tenant.auth)).json()["stock"]
    assert stock == 48
    # The same document with the same key: the same answer, the ids of the placed orders included.
    again = await gateway.post(
        "/graphql", json={"query": PLACE_THREE, "variables": {"p": product["id"]}}, headers=headers
    )
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == answer
    assert len((await gateway.get("/v1/orders", headers=tenant.auth)).json()["items"]) == 2


PLACE_TWO = """
mutation Place($p: ID!) {
  first: createOrder(items: [{productId: $p, quantity: 1}]) { id }
  second: createOrder(items: [{productId: $p, quantity: 2}]) { id }
}
"""


async def test_each_mutation_sends_its_own_key_on_to_the_service(stack, gateway):
    tenant, products, _ = await shop(gateway)
    product = products[0]
    key = f"place-{uuid.uuid4().hex}"
    body = {"query": PLACE_TWO, "variables": {"p": product["id"]}}
    before = (await gateway.get(f"/v1/products/{product['id']}", headers=tenant.auth)).json()["stock"]
    # A gateway without its idempotency stage, as when its store has forgotten the key (past its TTL,
    # or failing open): what keeps the document from placing its orders twice is the orders service.
    async with in_process_gateway(gateway_settings(stack, idempotency_enabled=False)) as bare:
        first = await bare.post("/graphql", json=body, headers={**tenant.auth, "Idempotency-Key": key})
        again = await bare.post("/graphql", json=body, headers={**tenant.auth, "Idempotency-Key": key})
        # The request's key itself is not one the document's mutations used: a REST order with it is new.
        rest = await bare.post(
            "/v1/orders",
            json={"items": [{"product_id": product["id"], "quantity": 1}]},
            headers={**tenant.auth, "Idempotency-Key": key},
        )
    assert "errors" not in first.json(), first.text
    # Each mutation had a key of its own (one key for both would be refused as reused for another body).
    assert first.json()["data"]["first"]["id"] != first.json()["data"]["second"]["id"]
    assert again.json() == first.json()
    assert rest.status_code == 201, rest.text
    assert rest.json()["id"] not in {first.json()["data"]["first"]["id"], first.json()["data"]["second"]["id"]}
    stock = (await gateway.get(f"/v1/products/{product['id']}", headers=tenant.auth)).json()["stock"]
    assert stock == before - 3 - 1  # the document's two orders once, and the REST order
    assert field_idempotency_key(key, "first") != field_idempotency_key(key, "second")


async def test_pages_have_rests_limits(gateway):
    tenant = await signup(gateway)
    count = DEFAULT_LIMIT // 2
    await concurrently(
        gateway.post(
            "/v1/products",
            json={"sku": f"GQL-PAGE-{i}-{tenant.id[:6]}", "name": "Page", "price_cents": 100, "stock": 1},
            headers=tenant.auth,
        )
        for i in range(count)
    )
    rest = (await gateway.get("/v1/products", headers=tenant.auth)).json()
    answer = await gql(gateway, tenant.auth, "{ products { items { id } nextCursor } }")
    assert len(answer["data"]["products"]["items"]) == len(rest["items"]) == count
    largest = await gql(gateway, tenant.auth, f"{{ products(limit: {MAX_LIMIT}) {{ items {{ id }} }} }}")
    assert "errors" not in largest, largest
    beyond = await gql(gateway, tenant.auth, f"{{ products(limit: {MAX_LIMIT + 1}) {{ items {{ id }} }} }}")
    assert beyond["errors"][0]["extensions"]["code"] == "VALIDATION_FAILED"
    assert beyond["errors"][0]["message"] == f"limit must be 1 to {MAX_LIMIT}."
