"""The aggregate routes and credit limits through the gateway, with every process real."""

from __future__ import annotations

import asyncio
import time

from tests.e2e.test_orders_flow import login, new_product, one_of, signup
from tests.orders_support import PASSWORD, assert_problem, unique


async def member_of(gateway, auth: dict) -> tuple[dict, dict[str, str]]:
    email = f"{unique('member')}@example.com"
    created = await gateway.post(
        "/v1/users", json={"email": email, "password": PASSWORD, "role": "member"}, headers=auth
    )
    assert created.status_code == 201, created.text
    return created.json(), await login(gateway, email)


async def test_dashboard_answers_every_part(gateway):
    created, auth = await signup(gateway)
    user_id = created["user"]["id"]
    product = await new_product(gateway, auth, stock=10, price_cents=300)
    kept = await gateway.post("/v1/orders", json=one_of(product["id"], 2), headers=auth)
    cancelled = await gateway.post("/v1/orders", json=one_of(product["id"], 1), headers=auth)
    assert kept.status_code == cancelled.status_code == 201, (kept.text, cancelled.text)
    assert (await gateway.post(f"/v1/orders/{cancelled.json()['id']}/cancel", headers=auth)).status_code == 200

    started = time.monotonic()
    response = await gateway.get(f"/v1/users/{user_id}/dashboard", headers=auth)
    took = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.headers["x-aggregate-complete"] == "true"
    body = response.json()
    assert body["user"]["id"] == user_id
    assert {o["id"] for o in body["orders"]["items"]} == {kept.json()["id"], cancelled.json()["id"]}
    assert body["orders"]["next_cursor"] is None
    # Only the open order still holds stock.
    assert body["reservations"]["items"] == [
        {"order_id": kept.json()["id"], "product_id": product["id"], "quantity": 2}
    ]
    assert set(body["parts"]) == {"user", "orders", "reservations"}
    for name, service in (("user", "users"), ("orders", "orders"), ("reservations", "inventory")):
        part = body["parts"][name]
        assert part["status"] == "ok"
        assert part["service"] == service
        assert "error_code" not in part
        # A call over the network, timed in milliseconds: more than nothing, within the request's own time.
        assert 0 < part["elapsed_ms"] <= took * 1000, (part["elapsed_ms"], took)

    # `me` is the caller's own user, for a token and for an API key (whose user created it): the same
    # parts, not an empty dashboard that says it is complete.
    key = await gateway.post(
        "/v1/api-keys", json={"name": "dashboards", "scopes": ["users:read", "orders:read"]}, headers=auth
    )
    assert key.status_code == 201, key.text
    for caller in (auth, {"X-API-Key": key.json()["api_key"]}):
        mine = await gateway.get("/v1/users/me/dashboard", headers=caller)
        assert mine.status_code == 200, mine.text
        assert mine.headers["x-aggregate-complete"] == "true"
        # The month's use moves with every request: compared apart.
        assert {name: part for name, part in mine.json().items() if name not in ("parts", "usage")} == {
            name: part for name, part in body.items() if name not in ("parts", "usage")
        }
    # The tenant's use of its quota is for callers that may read usage: the admin's token, not the key.
    assert set(body["usage"]) == {"period_start", "period_end", "limit", "used"}
    assert mine.json()["usage"] is None


async def test_dashboard_of_an_unknown_or_foreign_user_is_404(gateway):
    _, auth = await signup(gateway)
    other, _ = await signup(gateway)
    for user_id in (other["user"]["id"], "no-such-user"):
        body = assert_problem(await gateway.get(f"/v1/users/{user_id}/dashboard", headers=auth), 404)
        assert body["error_code"] == "USER_NOT_FOUND"


async def test_dashboard_needs_both_scopes(gateway):
    created, auth = await signup(gateway)
    key = await gateway.post("/v1/api-keys", json={"name": "reader", "scopes": ["users:read"]}, headers=auth)
    assert key.status_code == 201, key.text
    refused = await gateway.get(
        f"/v1/users/{created['user']['id']}/dashboard", headers={"X-API-Key": key.json()["api_key"]}
    )
    assert_problem(refused, 403, "INSUFFICIENT_SCOPE")


async def test_validate_passes_a_good_order_and_places_nothing(gateway):
    _, auth = await signup(gateway)
    product = await new_product(gateway, auth, stock=5, price_cents=400)
    response = await gateway.post("/v1/orders/validate", json=one_of(product["id"], 3), headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["valid"] is True
    assert body["total_cents"] == 1200
    assert body["checks"] == {"user": "passed", "credit": "passed", "stock": "passed"}
    assert body["failures"] == []
    listed = (await gateway.get("/v1/orders", headers=auth)).json()
    assert listed["items"] == []
    assert (await gateway.get(f"/v1/products/{product['id']}", headers=auth)).json()["stock"] == 5


async def test_validate_lists_the_stock_failure_and_cancels_the_credit_check(gateway):
    _, auth = await signup(gateway)
    product = await new_product(gateway, auth, stock=1)
    response = await gateway.post("/v1/orders/validate", json=one_of(product["id"], 2), headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["valid"] is False
    assert body["checks"]["stock"] == "failed"
    # The credit check waits for the stock check's total, so the failure always cancels it.
    assert body["checks"]["credit"] == "cancelled"
    assert body["failures"] == [
        {"check": "stock", "error_code": "INSUFFICIENT_STOCK", "detail": body["failures"][0]["detail"]}
    ]
    assert body["total_cents"] is None


async def test_validate_refuses_a_malformed_order(gateway):
    _, auth = await signup(gateway)
    assert_problem(await gateway.post("/v1/orders/validate", json={"items": []}, headers=auth), 422)
    assert_problem(
        await gateway.post("/v1/orders/validate", json={"items": [{"product_id": "a/b", "quantity": 1}]}, headers=auth),
        422,
    )


async def test_credit_limit_per_plan_set_by_an_admin_and_enforced(gateway):
    created, auth = await signup(gateway, plan="free")
    user_id = created["user"]["id"]
    me = (await gateway.get("/v1/users/me", headers=auth)).json()
    assert me["credit_limit_cents"] == 100_000
    assert me["credit_limit_custom"] is False
    product = await new_product(gateway, auth, stock=100, price_cents=1000)

    patched = await gateway.patch(f"/v1/users/{user_id}", json={"credit_limit_cents": 2500}, headers=auth)
    assert patched.status_code == 200, patched.text
    assert patched.json()["credit_limit_cents"] == 2500
    assert patched.json()["credit_limit_custom"] is True

    assert (await gateway.post("/v1/orders", json=one_of(product["id"], 2), headers=auth)).status_code == 201
    validated = (await gateway.post("/v1/orders/validate", json=one_of(product["id"], 1), headers=auth)).json()
    assert validated["checks"]["credit"] == "failed"
    assert validated["failures"][0]["error_code"] == "CREDIT_LIMIT_EXCEEDED"
    refused = await gateway.post("/v1/orders", json=one_of(product["id"], 1), headers=auth)
    body = assert_problem(refused, 422, "CREDIT_LIMIT_EXCEEDED")
    assert body["credit_limit_cents"] == 2500
    assert body["open_cents"] == 2000
    # The check says what placing the order answers.
    assert validated["failures"][0]["detail"] == body["detail"]
    # The refused order's stock came back.
    assert (await gateway.get(f"/v1/products/{product['id']}", headers=auth)).json()["stock"] == 98

    # Concurrent orders of one user never pass the limit together: 500 cents of room, 1000 each.
    results = await asyncio.gather(
        *(gateway.post("/v1/orders", json=one_of(product["id"], 1), headers=auth) for _ in range(5))
    )
    assert sorted(r.status_code for r in results) == [422] * 5
    assert (
        await gateway.patch(f"/v1/users/{user_id}", json={"credit_limit_cents": 4000}, headers=auth)
    ).status_code == 200
    results = await asyncio.gather(
        *(gateway.post("/v1/orders", json=one_of(product["id"], 1), headers=auth) for _ in range(5))
    )
    assert sorted(r.status_code for r in results) == [201, 201, 422, 422, 422]

    # Back to the plan's default; members may not change limits.
    back = await gateway.patch(f"/v1/users/{user_id}", json={"credit_limit_cents": None}, headers=auth)
    assert back.json()["credit_limit_cents"] == 100_000
    member, member_auth = await member_of(gateway, auth)
    refused = await gateway.patch(f"/v1/users/{member['id']}", json={"credit_limit_cents": 10**9}, headers=member_auth)
    assert_problem(refused, 403)
    # Nor may an API key, even one holding users:write.
    key = await gateway.post("/v1/api-keys", json={"name": "writer", "scopes": ["users:write"]}, headers=auth)
    assert key.status_code == 201, key.text
    by_key = await gateway.patch(
        f"/v1/users/{user_id}", json={"credit_limit_cents": 10**9}, headers={"X-API-Key": key.json()["api_key"]}
    )
    assert_problem(by_key, 403, "USER_REQUIRED")
    assert (await gateway.get("/v1/users/me", headers=auth)).json()["credit_limit_cents"] == 100_000
    assert_problem(await gateway.patch(f"/v1/users/{user_id}", json={"credit_limit_cents": -1}, headers=auth), 422)
