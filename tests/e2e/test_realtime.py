"""Order events on /v1/events with every process real: gateway instances sharing one Redis, each
serving every tenant's stream; exactly once, in order, resumable on another instance, never crossing
tenants."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from jose import jwt

from scripts.devstack import Stack, free_port
from tests.conftest import JWT_SECRET, ROOT
from tests.edge_support import Tenant, bearer, extra_gateways, signup

DEADLINE = 30.0


@dataclass
class SseReader:
    """Reads one SSE stream in the background, keeping every event it gets."""

    events: list[dict] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    headers: httpx.Headers | None = None
    status: int | None = None
    # True when the server ended the response (not the client), and when (Unix seconds).
    finished: bool = False
    ended_at: float | None = None

    async def read(self, client: httpx.AsyncClient, auth: dict[str, str], last_event_id: str | None = None) -> None:
        headers = {**auth, "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        async with client.stream("GET", "/v1/events", headers=headers, timeout=None) as response:
            self.status, self.headers = response.status_code, response.headers
            if response.status_code != 200:
                await response.aread()
                return
            current: dict = {}
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    self.comments.append(line)
                elif line.startswith("retry:"):
                    self.retry = int(line[6:])
                elif line.startswith(("id:", "event:", "data:")):
                    name, _, value = line.partition(":")
                    current[name] = value.strip()
                elif line == "" and "id" in current:
                    self.events.append(
                        {"id": int(current["id"]), "type": current["event"], **json.loads(current["data"])}
                    )
                    current = {}
            self.finished, self.ended_at = True, time.time()

    @property
    def ids(self) -> list[int]:
        return [event["id"] for event in self.events]


@contextlib.asynccontextmanager
async def reading(base_url: str, auth: dict[str, str], last_event_id: str | None = None) -> AsyncIterator[SseReader]:
    reader = SseReader()
    async with httpx.AsyncClient(base_url=base_url) as client:
        task = asyncio.create_task(reader.read(client, auth, last_event_id))
        try:
            await until(lambda: reader.status is not None or task.done(), "the stream to open")
            yield reader
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await task


async def until(condition, what: str, deadline: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"waited {deadline}s for {what}")
        await asyncio.sleep(0.05)


# The instances the cross-instance tests read from have a Redis pool of this many connections, fewer
# than the tenants streaming on them in `test_a_tenant_streams_live_however_many_others_stream`.
SMALL_POOL = 4


@pytest.fixture(scope="module")
def two_more(stack: Stack) -> Iterator[list[str]]:
    with extra_gateways(stack, 2, env={"GATEWAY_REDIS_MAX_CONNECTIONS": str(SMALL_POOL)}) as urls:
        yield urls


async def place_and_cancel(gateway: httpx.AsyncClient, tenant: Tenant, orders: int) -> list[str]:
    product = await gateway.post(
        "/v1/products",
        json={"sku": f"RT-{tenant.id[:8]}", "name": "Mug", "price_cents": 100, "stock": 100},
        headers=tenant.auth,
    )
    assert product.status_code == 201, product.text
    placed = []
    for _ in range(orders):
        order = await gateway.post(
            "/v1/orders", json={"items": [{"product_id": product.json()["id"], "quantity": 1}]}, headers=tenant.auth
        )
        assert order.status_code == 201, order.text
        placed.append(order.json()["id"])
    cancelled = await gateway.post(f"/v1/orders/{placed[0]}/cancel", headers=tenant.auth)
    assert cancelled.status_code == 200, cancelled.text
    return placed


async def test_every_instance_sees_every_event_once_in_order_and_tenants_never_cross(gateway, two_more):
    acme, other = await signup(gateway), await signup(gateway)
    async with (
        reading(two_more[0], acme.auth) as first,
        reading(two_more[1], acme.auth) as second,
        reading(two_more[0], other.auth) as other_first,
        reading(two_more[1], other.auth) as other_second,
    ):
        for reader in (first, second, other_first, other_second):
            assert reader.status == 200
            assert reader.headers is not None
            assert reader.headers["content-type"].startswith("text/event-stream")
            assert reader.headers["cache-control"] == "no-cache"
            assert reader.headers["x-accel-buffering"] == "no"
        # The writes go through a third instance; both tenants write, at once.
        placed, other_placed = await asyncio.gather(
            place_and_cancel(gateway, acme, 3), place_and_cancel(gateway, other, 2)
        )
        await until(
            lambda: (
                min(len(first.events), len(second.events)) >= 4
                and min(len(other_first.events), len(other_second.events)) >= 3
            ),
            "every event on both instances",
        )
        # A last event of each tenant's, written after all of the above: each stream is in order, so a
        # duplicate, or the other tenant's event, would have come before it, were there one.
        for tenant, orders in ((acme, placed), (other, other_placed)):
            cancelled = await gateway.post(f"/v1/orders/{orders[1]}/cancel", headers=tenant.auth)
            assert cancelled.status_code == 200, cancelled.text
        await until(
            lambda: all(
                any(e["type"] == "order.cancelled" and e["data"]["id"] == orders[1] for e in reader.events)
                for reader, orders in (
                    (first, placed),
                    (second, placed),
                    (other_first, other_placed),
                    (other_second, other_placed),
                )
            ),
            "each tenant's last event on both instances",
        )
        assert first.retry is not None
        for reader, tenant, orders in (
            (first, acme, placed),
            (second, acme, placed),
            (other_first, other, other_placed),
            (other_second, other, other_placed),
        ):
            assert reader.ids == sorted(set(reader.ids))
            assert [e["type"] for e in reader.events] == ["order.created"] * len(orders) + ["order.cancelled"] * 2
            assert [e["data"]["id"] for e in reader.events] == [*orders, orders[0], orders[1]]
            assert {e["data"]["tenant_id"] for e in reader.events} == {tenant.id}
            assert all(set(e) == {"id", "type", "timestamp", "data"} for e in reader.events)
        assert first.ids == second.ids
        assert other_first.ids == other_second.ids


async def event_latency(gateway: httpx.AsyncClient, tenant: Tenant, product_id: str, reader: SseReader) -> float:
    """Seconds from placing one order to its event's arrival on `reader`."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    order = await gateway.post(
        "/v1/orders", json={"items": [{"product_id": product_id, "quantity": 1}]}, headers=tenant.auth
    )
    assert order.status_code == 201, order.text
    await until(lambda: any(e["data"]["id"] == order.json()["id"] for e in reader.events), "the order's event")
    return loop.time() - started


async def test_a_tenant_streams_live_however_many_others_stream(gateway, two_more, record_property):
    """Three times as many tenants stream on one instance as its Redis pool has connections: a
    tenant's events still arrive about as soon as when it streams there alone."""
    acme = await signup(gateway)
    product = await gateway.post(
        "/v1/products", json={"sku": "RT-CROWD", "name": "Mug", "price_cents": 100, "stock": 100}, headers=acme.auth
    )
    assert product.status_code == 201, product.text
    url, product_id = two_more[0], product.json()["id"]
    async with reading(url, acme.auth) as alone:
        await until(lambda: alone.comments, "the stream to open")
        controls = [await event_latency(gateway, acme, product_id, alone) for _ in range(2)]
    async with contextlib.AsyncExitStack() as crowd:
        others = [
            await crowd.enter_async_context(reading(url, bearer(tenant_id=str(uuid.uuid4()))))
            for _ in range(3 * SMALL_POOL)
        ]
        await until(lambda: all(other.comments for other in others), "the other tenants' streams to open")
        async with reading(url, acme.auth) as crowded:
            await until(lambda: crowded.comments, "the stream to open")
            measured = [await event_latency(gateway, acme, product_id, crowded) for _ in range(3)]
        assert all(other.status == 200 and not other.finished for other in others)
    figures = (
        f"alone {[round(c, 2) for c in controls]} s; among {len(others)} others {[round(m, 2) for m in measured]} s"
    )
    record_property("crowded_stream_latency", figures)
    # Generous: a loaded machine slows both alike; a stalled read waits for a pool connection.
    assert max(measured) < 3 * max(controls) + 2.0, figures


async def test_resuming_on_another_instance_after_the_first_died(stack, gateway, two_more):
    acme = await signup(gateway)
    doomed = Stack(ports={**stack.ports, "gateway": free_port()}, env=stack.env, cwd=ROOT, workers=())
    doomed.start_one("gateway")
    try:
        doomed.wait_ready(60)
        async with reading(doomed.url(), acme.auth) as before:
            placed = await place_and_cancel(gateway, acme, 2)
            await until(lambda: len(before.events) >= 1, "the first event")
            seen = before.ids[:1]
            # The instance dies while its client has seen one event.
            doomed.procs["gateway"].kill()
            doomed.procs["gateway"].wait()
    finally:
        doomed.stop()
    async with reading(two_more[0], acme.auth, last_event_id=str(seen[-1])) as after:
        await until(lambda: len(after.events) >= 2, "the rest after resuming")
        # One more event, written now: a duplicate of the resumed ones would have come before it.
        cancelled = await gateway.post(f"/v1/orders/{placed[1]}/cancel", headers=acme.auth)
        assert cancelled.status_code == 200, cancelled.text
        await until(lambda: placed[1] in [e["data"]["id"] for e in after.events[2:]], "the last event")
        assert [e["type"] for e in after.events] == ["order.created", "order.cancelled", "order.cancelled"]
        assert after.ids[0] > seen[-1]
    async with reading(two_more[1], acme.auth, last_event_id="0") as everything:
        await until(lambda: len(everything.events) >= 4, "every event of the tenant")
        assert everything.ids == [seen[0], *after.ids]


async def test_a_bad_last_event_id_is_a_problem(gateway):
    acme = await signup(gateway)
    for bad in (
        "abc",
        "-1",
        "1e3",
        str(2**63),
        "9" * 5000,  # more digits than Python's int() reads (4,300)
        "99999999999",  # a number, but past every event ever written
    ):
        for headers, params in (({"Last-Event-ID": bad}, {}), ({}, {"last_event_id": bad})):
            # Streamed: an id taken would open a stream that never ends.
            async with gateway.stream("GET", "/v1/events", headers={**acme.auth, **headers}, params=params) as response:
                assert response.status_code == 400, (bad[:20], response.status_code)
                await response.aread()
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["error_code"] == "INVALID_LAST_EVENT_ID"
    anonymous = await gateway.get("/v1/events")
    assert anonymous.status_code == 401


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def open_idle_stream(port: int, auth: dict[str, str]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """One SSE connection that reads its answer's head and then nothing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{name}: {value}\r\n" for name, value in auth.items())
    writer.write(f"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{head}\r\n".encode())
    await writer.drain()
    status = await reader.readline()
    assert status.startswith(b"HTTP/1.1 200"), status
    return reader, writer


@pytest.fixture(scope="module")
def roomy_gateway(stack: Stack) -> Iterator[tuple[str, int, int]]:
    """A gateway process of its own (url, port, pid), allowing a pro tenant 1,100 connections and a
    free one 3."""
    env = {
        "GATEWAY_REALTIME_CONNECTIONS_PRO": "1100",
        "GATEWAY_REALTIME_CONNECTIONS_FREE": "3",
        # Each stream opened is a request of the tenant's quota.
        "GATEWAY_RATE_LIMIT_PRO": "100000/60s",
    }
    roomy = Stack(ports={**stack.ports, "gateway": free_port()}, env=stack.env, env_for={"gateway": env}, cwd=ROOT)
    roomy.workers = ()
    roomy.start_one("gateway")
    try:
        roomy.wait_ready(60)
        yield roomy.url(), roomy.ports["gateway"], roomy.procs["gateway"].pid
    finally:
        roomy.stop()


async def test_a_thousand_idle_streams_on_one_process(gateway, roomy_gateway, record_property):
    url, port, pid = roomy_gateway
    acme = await signup(gateway)
    warm = [await open_idle_stream(port, acme.auth) for _ in range(10)]
    before = rss_kib(pid)
    opened = []
    for _ in range(10):
        opened += await asyncio.gather(*(open_idle_stream(port, acme.auth) for _ in range(100)))
    after = rss_kib(pid)
    per_connection = (after - before) * 1024 / len(opened)
    figure = f"1,000 idle SSE connections: {per_connection / 1024:.1f} KiB each (gateway RSS {before} -> {after} KiB)"
    record_property("idle_sse_memory", figure)
    assert per_connection < 200 * 1024, figure
    # Still serving: an event reaches them. (Written through the roomy gateway: the streams opened
    # have spent the tenant's usual quota, which the gateways share.)
    async with httpx.AsyncClient(base_url=url, timeout=30) as roomy:
        await place_and_cancel(roomy, acme, 1)
    for reader, _ in [*warm, *opened][::97]:
        line = await asyncio.wait_for(reader.readuntil(b"event: order.created"), DEADLINE)
        assert line.endswith(b"event: order.created")
    for _, writer in [*warm, *opened]:
        writer.close()


async def test_a_plan_caps_the_connections_of_a_tenant(gateway, roomy_gateway):
    url, port, _ = roomy_gateway
    tiny = await signup(gateway, plan="free")
    held = [await open_idle_stream(port, tiny.auth) for _ in range(3)]
    async with httpx.AsyncClient(base_url=url) as client:
        refused = await client.get("/v1/events", headers=tiny.auth)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error_code"] == "REALTIME_CONNECTION_LIMIT"
        held[0][1].close()
        # A closed connection frees its place.
        status = 429
        for _ in range(200):
            async with client.stream("GET", "/v1/events", headers=tiny.auth) as again:
                status = again.status_code
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200
    for _, writer in held[1:]:
        writer.close()


def expiring_bearer(seconds: int) -> tuple[dict[str, str], int]:
    """Authorization whose access token expires in `seconds` (at most one less), and its `exp`."""
    now = int(time.time())
    claims = {
        "sub": str(uuid.uuid4()),
        "tid": str(uuid.uuid4()),
        "scope": "orders:read",
        "plan": "pro",
        "role": "member",
        "iat": now,
        "exp": now + seconds,
        "iss": "portico",
    }
    token = jwt.encode(claims, JWT_SECRET, algorithm="HS256", headers={"kid": "portico-1"})
    return {"Authorization": f"Bearer {token}"}, now + seconds


async def answered_at(client: httpx.AsyncClient, at: float) -> float:
    """When (Unix seconds) the gateway answers a request sent at `at`: how late it runs then."""
    await asyncio.sleep(max(0.0, at - time.time()))
    response = await client.get("/health/live")
    assert response.status_code == 200
    return time.time()


# How much later than a request sent at the same moment a connection may end at its token's expiry.
# A loaded machine delays both alike; a connection that outlived its token by this much did not end
# at its expiry.
EXPIRY_MARGIN_SECONDS = 2.0


async def test_the_stream_ends_when_its_token_expires(gateway):
    auth, expires_at = expiring_bearer(4)
    async with reading(str(gateway.base_url), auth) as stream:
        assert stream.status == 200
        control = asyncio.create_task(answered_at(gateway, expires_at))
        # The reader's task ends when the server ends the response.
        await until(lambda: stream.finished, "the stream to end at the token's expiry")
        answered = await control
    assert stream.ended_at is not None
    # Not before the token expired, and about when a request sent then was answered.
    assert stream.ended_at >= expires_at, (stream.ended_at, expires_at)
    assert stream.ended_at <= answered + EXPIRY_MARGIN_SECONDS, (stream.ended_at, answered)


async def test_a_redis_outage_ends_the_stream_cleanly(gateway, gateway_on_private_redis):
    url, redis_server = gateway_on_private_redis
    acme = await signup(gateway)
    async with reading(url, acme.auth) as stream:
        assert stream.status == 200
        await place_and_cancel(gateway, acme, 1)
        await until(lambda: len(stream.events) >= 2, "the events on the open stream")
        redis_server.stop()
        # Ends, and completely (an aborted response ends the reader with an error instead): the
        # client reconnects with Last-Event-ID.
        await until(lambda: stream.finished, "the stream to end when Redis fails")
    # A stream opened while Redis is down ends the same way.
    async with httpx.AsyncClient(base_url=url, timeout=DEADLINE) as client:
        response = await client.get("/v1/events", headers={**acme.auth, "Accept": "text/event-stream"})
    assert response.status_code == 200
    assert ": stream open" in response.text


async def test_the_stream_ends_when_its_api_key_is_revoked(gateway):
    acme = await signup(gateway)
    keys = []
    for name in ("kept", "revoked"):
        key = await gateway.post("/v1/api-keys", json={"name": name, "scopes": ["orders:read"]}, headers=acme.auth)
        assert key.status_code == 201, key.text
        keys.append(key.json())
    kept, revoked = keys
    base = str(gateway.base_url)
    # The control opens first, so each of its rechecks comes before the other stream's.
    async with reading(base, {"X-API-Key": kept["api_key"]}) as control:
        await until(lambda: control.comments, "the control stream to open")
        async with reading(base, {"X-API-Key": revoked["api_key"]}) as stream:
            assert stream.status == 200
            await until(lambda: stream.comments, "the stream to open")
            deleted = await gateway.delete(f"/v1/api-keys/{revoked['id']}", headers=acme.auth)
            assert deleted.status_code == 204, deleted.text
            # Rechecked every max(GATEWAY_API_KEY_CACHE_TTL_SECONDS, 5) seconds.
            await until(lambda: stream.finished, "the stream to end once its API key is revoked")
        # The stream whose key still works went through the same rechecks, and goes on.
        await place_and_cancel(gateway, acme, 1)
        await until(lambda: len(control.events) >= 2, "events on the stream whose key still works")
        assert not control.finished
        assert [e["type"] for e in control.events] == ["order.created", "order.cancelled"]
