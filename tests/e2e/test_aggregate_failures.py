"""Aggregate routes while services misbehave: a frozen process (SIGSTOP), a dead one (killed), one
answering 500 or garbage, and checks cancelled by a sibling's failure. The services are real
processes of this module's own; the gateway runs in-process so each test can point a service at a
scripted one."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from scripts.devstack import Stack
from tests.aggregate_support import (
    BUDGET,
    GARBAGE,
    ScriptedService,
    answer_json,
    dead,
    eventually,
    frozen,
    gateway_on,
    problem,
)
from tests.e2e.test_orders_flow import new_product, one_of
from tests.edge_support import Tenant
from tests.orders_support import assert_problem

# Far above what the budget allows, far below the client's default timeout (10 s): an answer within
# this bound was cut by the budget, not by the pool's timeout.
BOUND = BUDGET + 3.0


async def timed_get(client: httpx.AsyncClient, path: str, **kwargs: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await client.get(path, **kwargs)
    return response, time.monotonic() - started


def dashboard_path(tenant: Tenant) -> str:
    return f"/v1/users/{tenant.admin_id}/dashboard"


async def test_a_frozen_optional_part_times_out_within_the_budget(services: Stack, services_tenant: Tenant):
    """The frozen part waits out the budget, no less (it was cut by the budget, not given up at once)
    and no more: the request costs what the same request costs with every service answering (the
    control, measured just before) plus the budget, held to twice both, a margin for the machine's
    load that still refuses a part which waited three budgets (or a client's timeout)."""
    async with gateway_on(services) as gateway:
        healthy, control = await timed_get(gateway, dashboard_path(services_tenant), headers=services_tenant.auth)
        assert healthy.headers["x-aggregate-complete"] == "true", healthy.text
        with frozen(services, "inventory"):
            response, took = await timed_get(gateway, dashboard_path(services_tenant), headers=services_tenant.auth)
    assert took <= 2 * (BUDGET + control), (took, control)
    assert response.status_code == 200, response.text
    assert response.headers["x-aggregate-complete"] == "false"
    body = response.json()
    assert body["reservations"] is None
    assert body["user"]["id"] == services_tenant.admin_id
    assert body["orders"] == {"items": [], "next_cursor": None}
    part = body["parts"]["reservations"]
    assert part["status"] == "timeout"
    assert part["service"] == "inventory"
    assert part["error_code"] == "DOWNSTREAM_TIMEOUT"
    # Its deadline is the budget, set as the request's parts start: it waited for most of it at least.
    assert BUDGET * 1000 / 2 <= part["elapsed_ms"] <= took * 1000, (part["elapsed_ms"], took)
    assert body["parts"]["user"]["status"] == body["parts"]["orders"]["status"] == "ok"


async def test_a_dead_optional_part_is_an_error_naming_nothing_else(services: Stack, services_tenant: Tenant):
    async with gateway_on(services) as gateway:
        with dead(services, "orders"):
            response = await gateway.get(dashboard_path(services_tenant), headers=services_tenant.auth)
    assert response.status_code == 200, response.text
    assert response.headers["x-aggregate-complete"] == "false"
    body = response.json()
    assert body["orders"] is None
    assert body["parts"]["orders"]["status"] == "error"
    assert body["parts"]["orders"]["error_code"] == "DOWNSTREAM_UNAVAILABLE"
    assert body["parts"]["reservations"]["status"] == "ok"


async def test_parts_answering_500_or_garbage_are_errors(services: Stack, services_tenant: Tenant):
    failing = ScriptedService(lambda method, path: problem(500, "INTERNAL_ERROR", "stack trace that must not leak"))
    garbage = ScriptedService(lambda method, path: GARBAGE)
    async with (
        failing.running(),
        garbage.running(),
        gateway_on(services, orders_url=failing.url, inventory_url=garbage.url) as gateway,
    ):
        response = await gateway.get(dashboard_path(services_tenant), headers=services_tenant.auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "stack trace" not in response.text
    assert body["orders"] is body["reservations"] is None
    for name in ("orders", "reservations"):
        assert body["parts"][name]["status"] == "error"
        assert body["parts"][name]["error_code"] == "DOWNSTREAM_BAD_RESPONSE"


async def test_a_required_part_failing_is_the_answer(services: Stack, services_tenant: Tenant):
    async with gateway_on(services) as gateway:
        with frozen(services, "users"):
            response, took = await timed_get(gateway, dashboard_path(services_tenant), headers=services_tenant.auth)
        assert took < BOUND
        body = assert_problem(response, 504, "DOWNSTREAM_TIMEOUT")
        assert body["service"] == "users"
        with dead(services, "users"):
            body = assert_problem(await gateway.get(dashboard_path(services_tenant), headers=services_tenant.auth), 503)
        assert body["service"] == "users"


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_failed_check_cancels_its_siblings_and_aborts_their_requests(
    services: Stack, services_tenant: Tenant, transport: str
):
    # The credit check's service never answers; the stock check fails at once.
    hanging = ScriptedService(lambda method, path: None)
    refusing = ScriptedService(lambda method, path: problem(409, "INSUFFICIENT_STOCK", "Only 1 in stock."))
    async with (
        hanging.running(),
        refusing.running(),
        gateway_on(services, orders_url=hanging.url, inventory_url=refusing.url, http_transport=transport) as gw,
    ):
        response = await gw.post("/v1/orders/validate", json=one_of("p-1", 2), headers=services_tenant.auth)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["valid"] is False
        # The user check may finish before the stock check fails, or be cancelled by it.
        assert body["checks"]["user"] in ("passed", "cancelled")
        assert (body["checks"]["credit"], body["checks"]["stock"]) == ("cancelled", "failed")
        assert body["failures"] == [
            {"check": "stock", "error_code": "INSUFFICIENT_STOCK", "detail": "Only 1 in stock."}
        ]
        # The cancelled check's request was aborted: its connection closed, not left in the pool.
        await eventually(lambda: hanging.disconnects == 1)
        assert hanging.requests == [("GET", "/credit")]


async def test_a_check_that_cannot_be_made_is_the_answer(services: Stack, services_tenant: Tenant):
    async with gateway_on(services) as gateway:
        product = await new_product(gateway, services_tenant.auth, stock=3)
        with dead(services, "inventory"):
            response = await gateway.post(
                "/v1/orders/validate", json=one_of(product["id"]), headers=services_tenant.auth
            )
    body = assert_problem(response, 503)
    assert body["service"] == "inventory"


async def test_credit_answered_in_a_bad_shape_is_a_bad_answer(services: Stack, services_tenant: Tenant):
    odd = ScriptedService(lambda method, path: answer_json(200, {"credit_limit_cents": "lots"}))
    async with odd.running(), gateway_on(services, orders_url=odd.url) as gateway:
        product = await new_product(gateway, services_tenant.auth, stock=3)
        response = await gateway.post("/v1/orders/validate", json=one_of(product["id"]), headers=services_tenant.auth)
    body = assert_problem(response, 502, "DOWNSTREAM_BAD_RESPONSE")
    assert body["service"] == "orders"


@pytest.mark.parametrize("answer", [[{"total_cents": 1}], "in stock", 7, None])
async def test_stock_answered_with_something_not_an_object_is_a_bad_answer(
    services: Stack, services_tenant: Tenant, answer: Any
):
    odd = ScriptedService(lambda method, path: answer_json(200, answer))
    async with odd.running(), gateway_on(services, inventory_url=odd.url) as gateway:
        response = await gateway.post("/v1/orders/validate", json=one_of("p-1"), headers=services_tenant.auth)
    body = assert_problem(response, 502, "DOWNSTREAM_BAD_RESPONSE")
    assert body["service"] == "inventory"
    assert odd.requests == [("POST", "/stock-checks")]
