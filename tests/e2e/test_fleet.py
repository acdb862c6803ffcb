"""Fleets on real processes: three inventory instances (on 127.0.0.2, .3 and .4, one port) and two
users instances behind the gateway and the orders service. Balance, a killed instance, a frozen one,
DNS discovery through a DNS server of the test's own, and the retry budget when every instance
refuses. The processes are shared by the module's tests; health checks and waits are short."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import httpx
import pytest

from scripts.devstack import Stack, free_port
from tests.aggregate_support import ScriptedService, answer_json, frozen, gateway_on, metric, problem
from tests.conftest import ROOT, service_env
from tests.e2e.test_orders_flow import new_product, one_of
from tests.edge_support import Tenant, bearer, signup
from tests.faults import refused_port
from tests.infra import Servers
from tests.orders_support import assert_problem

INVENTORY = ("inventory", "inventory#2", "inventory#3")
USERS = ("users", "users#2")
HOSTS = {"inventory": "127.0.0.2", "inventory#2": "127.0.0.3", "inventory#3": "127.0.0.4"}
# Short waits, so ejections and returns happen within a test (the defaults are for production).
FLEET = {
    "UPSTREAM_EJECTION_FAILURES": "2",
    "UPSTREAM_EJECTION_SECONDS": "0.2",
    "UPSTREAM_EJECTION_MAX_SECONDS": "1",
    "UPSTREAM_HEALTH_CHECK_INTERVAL_SECONDS": "0.2",
    "UPSTREAM_STALL_SECONDS": "1",
}
GATEWAY = {name.lower(): value for name, value in FLEET.items()} | {
    # A frozen instance's requests wait for it to thaw: well within this.
    "http_timeout_seconds": 20,
    "idempotency_lock_seconds": 30,
    # The load here is the test's own, far past a plan's quota.
    "rate_limit_enabled": False,
}


@pytest.fixture(scope="module")
def fleet(migrated: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    port = free_port()
    env = {
        **service_env(migrated),
        "PYTHONUNBUFFERED": "1",
        **{f"ORDERS_{name}": value for name, value in FLEET.items()},
        # Stock a failed placement may hold is released soon after (the recovery task).
        "ORDERS_RECOVERY_INTERVAL_SECONDS": "0.5",
        "ORDERS_RECOVERY_GRACE_SECONDS": "1",
    }
    stack = Stack(
        ports={
            **dict.fromkeys(INVENTORY, port),
            **{name: free_port() for name in (*USERS, "orders", "webhooks", "gateway")},
        },
        hosts=HOSTS,
        env=env,
        log_dir=tmp_path_factory.mktemp("fleet-logs"),
        cwd=ROOT,
        workers=(),
    )
    try:
        for name in (*INVENTORY, *USERS, "orders"):
            stack.start_one(name)
        for name in (*INVENTORY, *USERS, "orders"):
            stack.wait_ready(90, name)
        yield stack
    finally:
        stack.stop()


@contextlib.asynccontextmanager
async def gateway_in_front(fleet: Stack, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    urls = {f"{service}_url": fleet.service_url(service) for service in ("users", "orders", "inventory")}
    async with gateway_on(fleet, **{**GATEWAY, **urls, **overrides}) as gateway:
        yield gateway


@pytest.fixture(scope="module")
async def tenant(fleet: Stack) -> Tenant:
    async with gateway_in_front(fleet) as gateway:
        return await signup(gateway)


async def served(stack: Stack, name: str, method: str, route: str, status: str) -> float:
    """What one instance says it served (its own /metrics)."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(stack.url(name) + "/metrics")).text
    return metric(text, "http_requests_total", method=method, route=route, status=status) or 0.0


async def served_by(
    stack: Stack, names: tuple[str, ...], method: str, route: str, status: str = "200"
) -> dict[str, float]:
    return {name: await served(stack, name, method, route, status) for name in names}


def shares_within(before: dict[str, float], after: dict[str, float], total: int, tolerance: float) -> None:
    shares = {name: after[name] - before[name] for name in before}
    assert sum(shares.values()) >= total, shares
    fair = sum(shares.values()) / len(shares)
    for name, count in shares.items():
        assert abs(count - fair) <= tolerance * fair, (name, shares)


async def in_parallel(count: int, work: Callable[[int], Any]) -> None:
    async with asyncio.TaskGroup() as group:
        for index in range(count):
            group.create_task(work(index))


async def test_each_instance_serves_its_share(fleet: Stack, tenant: Tenant):
    async with gateway_in_front(fleet) as gateway:
        product = await new_product(gateway, tenant.auth, stock=1000, price_cents=1)
        products_before = await served_by(fleet, INVENTORY, "GET", "/products/{product_id}")
        users_before = await served_by(fleet, USERS, "GET", "/users/me")
        reservations_before = await served_by(fleet, INVENTORY, "POST", "/reservations", "201")
        statuses: Counter[int] = Counter()

        async def read(index: int) -> None:
            for _ in range(30):
                statuses[(await gateway.get(f"/v1/products/{product['id']}", headers=tenant.auth)).status_code] += 1
                statuses[(await gateway.get("/v1/users/me", headers=tenant.auth)).status_code] += 1

        async def place(index: int) -> None:
            for _ in range(20):
                response = await gateway.post(
                    "/v1/orders",
                    json=one_of(product["id"]),
                    headers={**tenant.auth, "Idempotency-Key": uuid.uuid4().hex},
                )
                statuses[response.status_code] += 1

        await in_parallel(10, read)
        assert statuses == {200: 600}
        shares_within(products_before, await served_by(fleet, INVENTORY, "GET", "/products/{product_id}"), 300, 0.2)
        shares_within(users_before, await served_by(fleet, USERS, "GET", "/users/me"), 300, 0.2)

        # The orders service balances its own calls the same way: a users check and a reservation each.
        statuses.clear()
        users_before = await served_by(fleet, USERS, "GET", "/users/me")
        await in_parallel(5, place)
        assert statuses == {201: 100}
        shares_within(users_before, await served_by(fleet, USERS, "GET", "/users/me"), 100, 0.2)
        reservations = await served_by(fleet, INVENTORY, "POST", "/reservations", "201")
        assert all(reservations[name] > reservations_before[name] for name in INVENTORY), reservations


async def test_a_killed_instance_fails_no_read_and_no_keyed_order_twice(fleet: Stack, tenant: Tenant):
    async with gateway_in_front(fleet) as gateway:
        product = await new_product(gateway, tenant.auth, stock=100_000, price_cents=1)
        path = f"/v1/products/{product['id']}"
        before = len(await all_orders(gateway, tenant))
        reads: Counter[int] = Counter()
        placed: dict[str, str] = {}
        stop_at = time.monotonic() + 10

        async def read(index: int) -> None:
            while time.monotonic() < stop_at:
                reads[(await gateway.get(path, headers=tenant.auth)).status_code] += 1

        async def place(index: int) -> None:
            while time.monotonic() < stop_at:
                key = uuid.uuid4().hex
                # A client of an idempotent API retries with the same key until it has an answer.
                give_up = time.monotonic() + 60
                while True:
                    response = await gateway.post(
                        "/v1/orders", json=one_of(product["id"]), headers={**tenant.auth, "Idempotency-Key": key}
                    )
                    if response.status_code in (200, 201):
                        placed[key] = response.json()["id"]
                        break
                    assert response.status_code in (409, 502, 503, 504), response.text
                    assert time.monotonic() < give_up, response.text
                    # As the answer says (a 409 while the failed attempt is being undone: Retry-After: 1).
                    await asyncio.sleep(min(5.0, float(response.headers.get("retry-after", "0.5"))))

        async def kill() -> None:
            await asyncio.sleep(3)
            proc = fleet.procs["inventory#3"]
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait)

        try:
            async with asyncio.TaskGroup() as group:
                for index in range(4):
                    group.create_task(read(index))
                for index in range(3):
                    group.create_task(place(index))
                group.create_task(kill())
            assert set(reads) == {200}, reads
            assert sum(reads.values()) > 50
            assert len(placed) > 10
            # Exactly once: one order per key, and a replay of each key answers that order.
            assert len(set(placed.values())) == len(placed)
            for key, order_id in random.sample(sorted(placed.items()), 5):
                replay = await gateway.post(
                    "/v1/orders", json=one_of(product["id"]), headers={**tenant.auth, "Idempotency-Key": key}
                )
                assert replay.json()["id"] == order_id
            orders = await all_orders(gateway, tenant)
            assert len(orders) - before == len(placed)
            assert set(placed.values()) <= {order["id"] for order in orders}

            # Stock is exact once what failed placements held is released.
            async def exact() -> bool:
                stock = (await gateway.get(path, headers=tenant.auth)).json()["stock"]
                return bool(stock == 100_000 - len(placed))

            await eventually_async(exact)
        finally:
            fleet.start_one("inventory#3")
            await asyncio.to_thread(fleet.wait_ready, 90, "inventory#3")


async def all_orders(gateway: httpx.AsyncClient, tenant: Tenant) -> list[dict[str, Any]]:
    orders: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = "/v1/orders?limit=100" + (f"&cursor={cursor}" if cursor else "")
        page = (await gateway.get(query, headers=tenant.auth)).json()
        orders += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return orders


async def eventually_async(check: Callable[[], Any], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.2)


async def test_a_frozen_instance_is_ejected_and_checked_back(fleet: Stack, tenant: Tenant):
    async with gateway_in_front(fleet) as gateway:
        product = await new_product(gateway, tenant.auth, stock=1, price_cents=1)
        reads: Counter[int] = Counter()
        done = asyncio.Event()

        async def read(index: int) -> None:
            while not done.is_set():
                reads[(await gateway.get(f"/v1/products/{product['id']}", headers=tenant.auth)).status_code] += 1

        async def instances(state: str) -> float | None:
            text = (await gateway.get("/metrics")).text
            return metric(text, "portico_upstream_instances", service="inventory", state=state)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(read(index)) for index in range(4)]
            await eventually_async(lambda: _true_after(reads, 20))
            with frozen(fleet, "inventory#2"):
                await eventually_async(lambda: _equals(instances("ejected"), 1))
                text = (await gateway.get("/metrics")).text
                assert metric(text, "portico_upstream_ejections_total", service="inventory") == 1
                assert await instances("healthy") == 2
            # Thawed: a health check brings it back.
            await eventually_async(lambda: _equals(instances("healthy"), 3))
            done.set()
            await asyncio.gather(*tasks)
        # The requests that waited on the frozen instance were answered once it thawed.
        assert set(reads) == {200}, reads


async def _true_after(reads: Counter[int], count: int) -> bool:
    return sum(reads.values()) >= count


async def _equals(value: Any, wanted: float) -> bool:
    return bool(await value == wanted)


class DnsServer(asyncio.DatagramProtocol):
    """Answers A queries for the names in `records` (TTL 0: asked again at the resolver's minimum);
    AAAA with no record; other names NXDOMAIN."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio's datagram transport, typed as the base

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        addresses = self.records.get(question.name.to_text().rstrip(".").lower())
        if addresses is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A and addresses:
            response.answer.append(dns.rrset.from_text(question.name, 0, "IN", "A", *addresses))
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@contextlib.asynccontextmanager
async def dns_server() -> AsyncIterator[tuple[DnsServer, str]]:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(DnsServer, local_addr=("127.0.0.1", 0))
    try:
        yield server, f"127.0.0.1:{transport.get_extra_info('sockname')[1]}"
    finally:
        transport.close()


async def test_instances_are_discovered_through_dns(fleet: Stack, tenant: Tenant):
    name = "inventory.fleet.test"
    port = fleet.ports["inventory"]
    async with dns_server() as (server, address):
        dns_settings = {"upstream_dns_servers": [address], "upstream_dns_min_ttl_seconds": 0.1}
        # A name that never resolved: 503 naming the service, with Retry-After.
        async with gateway_in_front(fleet, inventory_url=f"dns+http://missing.test:{port}", **dns_settings) as gateway:
            refused = await gateway.get("/v1/products/p-1", headers=tenant.auth)
            body = assert_problem(refused, 503, "SERVICE_UNAVAILABLE")
            assert body["service"] == "inventory"
            assert int(refused.headers["retry-after"]) >= 1

        server.records[name] = ["127.0.0.2", "127.0.0.3"]
        async with gateway_in_front(fleet, inventory_url=f"dns+http://{name}:{port}", **dns_settings) as gateway:
            product = await new_product(gateway, tenant.auth, stock=1, price_cents=1)
            reads: Counter[int] = Counter()
            done = asyncio.Event()

            async def read(index: int) -> None:
                while not done.is_set():
                    response = await gateway.get(f"/v1/products/{product['id']}", headers=tenant.auth)
                    reads[response.status_code] += 1

            async def counts() -> dict[str, float]:
                return await served_by(fleet, INVENTORY, "GET", "/products/{product_id}")

            async def grows(instance: str, since: dict[str, float], by: float = 10) -> bool:
                return (await counts())[instance] >= since[instance] + by

            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(read(index)) for index in range(4)]
                start = await counts()
                await eventually_async(lambda: grows("inventory", start))
                await eventually_async(lambda: grows("inventory#2", start))
                assert (await counts())["inventory#3"] == start["inventory#3"]

                # An instance added to the answer gets traffic.
                server.records[name] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
                added = await counts()
                await eventually_async(lambda: grows("inventory#3", added))

                # One removed drains: no request fails, and it gets no more.
                server.records[name] = ["127.0.0.2", "127.0.0.4"]
                await asyncio.sleep(1)
                removed = await counts()
                await eventually_async(lambda: grows("inventory", removed, 20))
                assert (await counts())["inventory#2"] == removed["inventory#2"]

                # An answer without records keeps the last good set.
                server.records[name] = []
                await asyncio.sleep(1)
                empty = await counts()
                await eventually_async(lambda: grows("inventory#3", empty, 20))
                done.set()
                await asyncio.gather(*tasks)
            assert set(reads) == {200}, reads
            text = (await gateway.get("/metrics")).text
            assert (metric(text, "portico_upstream_dns_failures_total", service="inventory") or 0) >= 1
            assert metric(text, "portico_upstream_instances", service="inventory", state="healthy") == 2
            # The instance label names only instances of the fleet.
            labelled = {
                line.split('instance="')[1].split('"')[0]
                for line in text.splitlines()
                if line.startswith("portico_upstream_requests_total{") and 'service="inventory"' in line
            }
            assert labelled <= {f"127.0.0.{n}:{port}" for n in (2, 3, 4)} | {""}, labelled
            assert f"127.0.0.3:{port}" not in labelled, "a drained instance's series go with it"


async def test_retries_stay_within_the_budget_when_every_instance_refuses(fleet: Stack, tenant: Tenant):
    with refused_port() as a, refused_port() as b, refused_port() as c:
        urls = ",".join(f"http://127.0.0.1:{port}" for port in (a, b, c))
        settings = {"inventory_url": urls, "circuit_enabled": False, "upstream_retry_budget_min_retries": 5}
        async with gateway_in_front(fleet, **settings) as gateway:
            requests = 100
            for _ in range(requests):
                assert_problem(
                    await gateway.get("/v1/products/p-1", headers=tenant.auth), 503, "DOWNSTREAM_UNAVAILABLE"
                )
            text = (await gateway.get("/metrics")).text
    sent = metric(text, "portico_upstream_retries_total", service="inventory", outcome="sent") or 0
    refused = metric(text, "portico_upstream_retries_total", service="inventory", outcome="budget_exhausted") or 0
    # Every call wanted one retry on another instance; the budget let 20% of the calls (and 5) have it.
    assert sent + refused == requests
    assert 0 < sent <= 5 + 0.2 * requests
    attempts = sum(
        metric(text, "portico_upstream_requests_total", service="inventory", status="unreachable", instance=instance)
        or 0
        for instance in (f"127.0.0.1:{port}" for port in (a, b, c))
    )
    assert attempts == requests + sent


def test_a_service_url_that_does_not_parse_stops_the_start():
    env = {**os.environ, "GATEWAY_INVENTORY_URL": "http://127.0.0.1:8003,,http://127.0.0.1:8013"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "GATEWAY_INVENTORY_URL" in result.stderr
    assert "empty entry" in result.stderr


async def test_the_circuit_opens_only_when_no_instance_is_healthy(fleet: Stack):
    failing = {"a": True, "b": False}

    def instance(name: str) -> Callable[[str, str], Any]:
        def answer(method: str, path: str) -> Any:
            if failing[name]:
                return problem(500, "INTERNAL_ERROR", "boom")
            return answer_json(200, {"id": "u-1", "email": "a@example.com", "role": "admin", "tenant_id": "t-1"})

        return answer

    a, b = ScriptedService(instance("a")), ScriptedService(instance("b"))
    settings = {"users_url": f"{a.url},{b.url}", "circuit_failure_threshold": 2, "upstream_ejection_failures": 2}
    async with a.running(), b.running():
        settings["users_url"] = f"{a.url},{b.url}"
        async with gateway_on(fleet, **{**GATEWAY, **settings}) as gateway:
            auth = bearer()
            statuses = Counter([(await gateway.get("/v1/users/me", headers=auth)).status_code for _ in range(20)])
            # The failing instance answered until it was ejected; the circuit of users stayed closed.
            assert statuses[200] >= 18, statuses
            assert statuses[502] <= 2, statuses
            text = (await gateway.get("/metrics")).text
            assert metric(text, "portico_circuit_state", service="users") == 0
            assert metric(text, "portico_upstream_instances", service="users", state="ejected") == 1

            # Now none is healthy: the service's circuit opens.
            failing["b"] = True
            answers = [await gateway.get("/v1/users/me", headers=auth) for _ in range(4)]
            assert answers[-1].json()["error_code"] == "CIRCUIT_OPEN", [r.status_code for r in answers]
