"""Circuit breakers, precise upstream failures, upstream metrics and the fan-out's trace, on real
processes and on scripted services that fail, flap, or answer 503 with Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from scripts.devstack import Stack, free_port
from tests.aggregate_support import ScriptedService, answer_json, eventually, frozen, gateway_on, metric, problem
from tests.e2e.test_orders_flow import new_product, one_of
from tests.edge_support import Tenant, bearer, signup
from tests.infra import Servers
from tests.orders_support import assert_problem


class Flapping:
    """A scripted users service that fails (500) until told to recover."""

    def __init__(self) -> None:
        self.healthy = False

    def __call__(self, method: str, path: str) -> Any:
        if self.healthy:
            return answer_json(200, {"id": "u-1", "email": "a@example.com", "role": "admin", "tenant_id": "t-1"})
        return problem(500, "INTERNAL_ERROR", "boom")


async def test_a_circuit_opens_answers_at_once_and_closes_after_a_trial(services: Stack):
    flapping = Flapping()
    users = ScriptedService(flapping)
    settings = {"circuit_failure_threshold": 3, "circuit_window_seconds": 30, "circuit_open_seconds": 0.5}
    async with users.running(), gateway_on(services, users_url=users.url, **settings) as gateway:
        auth = bearer()
        for _ in range(3):
            assert_problem(await gateway.get("/v1/users/me", headers=auth), 502, "DOWNSTREAM_BAD_RESPONSE")
        refused = await gateway.get("/v1/users/me", headers=auth)
        body = assert_problem(refused, 503, "CIRCUIT_OPEN")
        assert body["service"] == "users"
        assert int(refused.headers["retry-after"]) >= 1
        assert len(users.requests) == 3  # refused without a call
        scraped = (await gateway.get("/metrics")).text
        assert metric(scraped, "portico_circuit_state", service="users") == 2
        assert metric(scraped, "portico_upstream_requests_total", service="users", status="circuit_open") == 1

        # Half-open: the trial call fails, and the circuit opens again at once.
        async def trial() -> httpx.Response:
            while True:
                response = await gateway.get("/v1/users/me", headers=auth)
                if response.status_code != 503:
                    return response
                await asyncio.sleep(0.05)

        assert (await asyncio.wait_for(trial(), 20)).status_code == 502
        assert_problem(await gateway.get("/v1/users/me", headers=auth), 503, "CIRCUIT_OPEN")

        # Recovered: the next trial succeeds and closes the circuit.
        flapping.healthy = True
        assert (await asyncio.wait_for(trial(), 20)).status_code == 200
        assert (await gateway.get("/v1/users/me", headers=auth)).status_code == 200
        scraped = (await gateway.get("/metrics")).text
        assert metric(scraped, "portico_circuit_state", service="users") == 0


async def test_a_part_whose_circuit_is_open_is_skipped_without_a_call(services: Stack, services_tenant: Tenant):
    failing = ScriptedService(lambda method, path: problem(500, "INTERNAL_ERROR", "boom"))
    settings = {"circuit_failure_threshold": 2, "circuit_open_seconds": 60}
    async with failing.running(), gateway_on(services, orders_url=failing.url, **settings) as gateway:
        path = f"/v1/users/{services_tenant.admin_id}/dashboard"
        for _ in range(2):
            body = (await gateway.get(path, headers=services_tenant.auth)).json()
            assert body["parts"]["orders"]["status"] == "error"
        response = await gateway.get(path, headers=services_tenant.auth)
        assert response.status_code == 200, response.text
        assert response.headers["x-aggregate-complete"] == "false"
        part = response.json()["parts"]["orders"]
        assert (part["status"], part["error_code"]) == ("skipped", "CIRCUIT_OPEN")
        assert len(failing.requests) == 2


@pytest.fixture
async def orders_behind(services: Stack) -> Iterator[Any]:
    """An orders process of the test's own, whose inventory service is a scripted one."""
    started: list[Stack] = []

    async def start(inventory_url: str) -> Stack:
        extra = Stack(
            ports={**services.ports, "orders": free_port()},
            env=services.env,
            env_for={"orders": {"ORDERS_INVENTORY_URL": inventory_url}},
            log_dir=services.log_dir,
            cwd=services.cwd,
            workers=(),
        )
        extra.start_one("orders")
        started.append(extra)
        await asyncio.to_thread(extra.wait_ready, 90, "orders")
        return extra

    try:
        yield start
    finally:
        for extra in started:
            extra.stop()


async def test_a_503_from_further_down_reaches_the_client_naming_it(
    services: Stack, services_tenant: Tenant, orders_behind
):
    busy = ScriptedService(
        lambda method, path: (
            503,
            {"content-type": "application/problem+json", "retry-after": "7"},
            b'{"status": 503, "error_code": "DATABASE_UNAVAILABLE", "detail": "The database is unavailable."}',
        )
    )
    async with busy.running():
        orders = await orders_behind(busy.url)
        async with gateway_on(services, orders_url=orders.url("orders")) as gateway:
            response = await gateway.post("/v1/orders", json=one_of("p-1"), headers=services_tenant.auth)
    body = assert_problem(response, 503, "DATABASE_UNAVAILABLE")
    assert body["service"] == "inventory"
    assert response.headers["retry-after"] == "7"


async def test_a_hung_service_is_named_by_its_caller_within_its_timeout(services: Stack, services_tenant: Tenant):
    async with gateway_on(services) as gateway:
        product = await new_product(gateway, services_tenant.auth, stock=3)
        with frozen(services, "inventory"):
            started = time.monotonic()
            response = await gateway.post("/v1/orders", json=one_of(product["id"]), headers=services_tenant.auth)
            took = time.monotonic() - started
    # The orders service gave up on inventory (its timeout is below the gateway's) and said so.
    body = assert_problem(response, 504, "DOWNSTREAM_TIMEOUT")
    assert body["service"] == "inventory"
    assert took < 10


def total(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of `name` with these labels (whatever its other labels: the instance)."""
    found = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == name or sample.startswith(name + "{"):
            have = dict(re.findall(r'(\w+)="([^"]*)"', sample[len(name) :]))
            if all(have.get(key) == wanted for key, wanted in labels.items()):
                found += float(value)
    return found


@contextlib.asynccontextmanager
async def relay_held_off(stack: Stack, migrated: Servers) -> AsyncIterator[None]:
    """For the block, the stack gateway's real-time relay does not poll the orders feed (a GET every
    0.2 s, counted among its calls to orders): its lease is taken in Redis, and the block starts once
    the gateway has logged losing it (so its last poll is over). Given back at the end."""
    key = f"{migrated.redis_prefix}events:{{relay}}:lease"
    log = Path(str(stack.log_dir)) / "gateway.log"
    lost = "real-time relay lease lost"

    def lost_times() -> int:
        return log.read_text(errors="replace").count(lost)

    before = lost_times()
    redis = Redis.from_url(migrated.redis_url)
    try:
        await redis.set(key, "held-by-the-test", px=30_000)
        await eventually(lambda: lost_times() > before)
        yield
    finally:
        await redis.delete(key)
        await redis.aclose()


UPSTREAM_CALLS = "portico_upstream_requests_total"
UPSTREAM_TIMES = "portico_upstream_request_duration_seconds_count"


async def test_upstream_metrics_and_one_span_per_part(gateway, otlp, stack: Stack, migrated: Servers):
    tenant = await signup(gateway)
    trace_id = os.urandom(16).hex()
    headers = {**tenant.auth, "traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"}
    async with relay_held_off(stack, migrated):
        before = (await gateway.get("/metrics")).text
        response = await gateway.get(f"/v1/users/{tenant.admin_id}/dashboard", headers=headers)
        after = (await gateway.get("/metrics")).text
    assert response.status_code == 200, response.text

    def parts() -> list[Any]:
        return [s for s in otlp.trace(trace_id) if s.service == "gateway" and s.name.startswith("part ")]

    def server_spans() -> list[Any]:
        return [s for s in otlp.trace(trace_id) if s.service == "gateway" and s.kind == 2]

    # The request's span ends last, so it may reach the receiver in a later batch than its parts.
    await eventually(lambda: len(parts()) == 3 and len(server_spans()) == 1)
    spans = otlp.trace(trace_id)
    server = server_spans()[0]
    by_id = {s.span_id: s for s in spans}
    for part in parts():
        # Under the request's span (through the route's internal spans), each with its service's call.
        parent = by_id[part.parent_span_id]
        while parent.span_id != server.span_id:
            parent = by_id[parent.parent_span_id]
        assert part.attributes["portico.part.status"] == "ok"
        assert any(s.parent_span_id == part.span_id and s.kind == 3 for s in spans)
    assert {p.attributes["portico.service"] for p in parts()} == {"users", "orders", "inventory"}

    # Between the two scrapes the gateway made one call to each service (the dashboard's part), and
    # counted and timed each once: deltas, as earlier tests on this gateway counted calls too.
    for service in ("users", "orders", "inventory"):
        counted = total(after, UPSTREAM_CALLS, service=service, method="GET", status="200") - total(
            before, UPSTREAM_CALLS, service=service, method="GET", status="200"
        )
        timed = total(after, UPSTREAM_TIMES, service=service, method="GET") - total(
            before, UPSTREAM_TIMES, service=service, method="GET"
        )
        assert (counted, timed) == (1, 1), (service, counted, timed)
        assert total(after, UPSTREAM_CALLS, service=service) - total(before, UPSTREAM_CALLS, service=service) == 1
    assert metric(after, "portico_circuit_state", service="orders") == 0
