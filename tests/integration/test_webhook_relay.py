"""The relay from the orders outbox into pending deliveries, driven one batch at a time.

Each test gets a webhooks database of its own on the real PostgreSQL, so the relay's cursor and what
it stored are the test's alone. The feed is the real orders service of the `stack` (events made by
placing and cancelling orders through the gateway), or a real socket that misbehaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.webhooks.app import create_app
from services.webhooks.relay import FeedError, OrdersRelay
from services.webhooks.settings import WebhooksSettings
from shared.contract import Identity
from shared.errors import UpstreamBadResponse, UpstreamUnavailable
from shared.http import ServiceClient
from shared.identity_token import IdentitySigner
from shared.pool import create_http_client
from shared.sql_spans import instrument_engine
from tests.conftest import app_client, internal_headers, service_env, settings_kwargs
from tests.e2e.test_webhooks_flow import Shop
from tests.faults import ServiceProcess, eventually, refused_port
from tests.infra import Servers
from tests.orders_support import db_fetch
from tests.webhook_support import HooksDb, hooks_db

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def relay_db(migrated: Servers, tmp_path: Path) -> AsyncIterator[HooksDb]:
    async with hooks_db(migrated, "postgresql", tmp_path) as db:
        yield db


@pytest.fixture
async def http(migrated: Servers) -> AsyncIterator[httpx.AsyncClient]:
    settings = WebhooksSettings(**settings_kwargs(migrated, "webhooks"), http_timeout_seconds=3.0)
    client = create_http_client(settings, TracerProvider())
    try:
        yield client
    finally:
        await client.aclose()


def relay_for(db: HooksDb, http: httpx.AsyncClient, signer: IdentitySigner, orders_url: str, **kwargs) -> OrdersRelay:
    return OrdersRelay(db.sessionmaker, ServiceClient("orders", orders_url, http, signer), **kwargs)


@contextlib.asynccontextmanager
async def feed_answering(*answers: bytes) -> AsyncIterator[str]:
    """Fault injector: an orders feed that breaks its contract (the real orders service cannot be
    made to), answering each request with the next of `answers` (the last one repeats)."""
    remaining = list(answers)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(remaining.pop(0) if len(remaining) > 1 else remaining[0])
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


def http_answer(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body


async def assert_nothing_stored(db: HooksDb) -> None:
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 0
    assert await db.fetchval("SELECT coalesce(max(position), 0) FROM webhook_relay_cursors") == 0


async def test_unreachable_orders_service_stores_nothing(relay_db, http, signer):
    with refused_port() as port:
        relay = relay_for(relay_db, http, signer, f"http://127.0.0.1:{port}")
        with pytest.raises(UpstreamUnavailable):
            await relay.run_once()
    await assert_nothing_stored(relay_db)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (http_answer(500, b'{"detail": "boom"}'), UpstreamBadResponse),
        (http_answer(401, b'{"error_code": "INVALID_INTERNAL_IDENTITY"}'), FeedError),
        (http_answer(404, b'{"error_code": "NOT_FOUND"}'), FeedError),
        (http_answer(200, b"<html>not json</html>", "text/html"), FeedError),
        (http_answer(200, b'{"items": [{"seq": 1}], "next_after": 1}'), FeedError),
        (http_answer(200, b'{"items": [], "next_after": -1}'), FeedError),
        (
            http_answer(
                200,
                b'{"items": [{"seq": 1, "id": "e1", "type": "order.created", "tenant_id": "t",'
                b' "created_at": "2024-01-01T00:00:00", "data": {}}], "next_after": 1}',
            ),
            FeedError,  # a timestamp without an offset is ambiguous
        ),
    ],
)
async def test_a_feed_that_breaks_its_contract_stores_nothing(relay_db, http, signer, answer, error):
    async with feed_answering(answer) as url:
        relay = relay_for(relay_db, http, signer, url)
        with pytest.raises(error):
            await relay.run_once()
    await assert_nothing_stored(relay_db)


def retries_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "portico.webhooks.relay" and "retrying" in r.getMessage()]


async def test_the_loop_backs_off_logs_and_stops_promptly(relay_db, http, signer, caplog):
    caplog.set_level(logging.WARNING, logger="portico.webhooks.relay")
    with refused_port() as port:
        relay = relay_for(relay_db, http, signer, f"http://127.0.0.1:{port}", interval=0.01, max_backoff=0.05)
        for failures in range(1, 12):
            step = min(0.05, 0.01 * 2**failures)
            assert step / 2 <= relay.backoff(failures) <= step
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))

        async def retried_three_times() -> bool:
            return len(retries_logged(caplog)) >= 3

        await eventually(retried_three_times)
        # Stopping is prompt: the loop is waiting out a backoff of at most 50 ms, and the stop ends
        # that wait. Were it not, the task would still run after its backoff plus the next call.
        stop.set()
        await asyncio.wait_for(task, 60)
    assert "orders service is unreachable" in retries_logged(caplog)[0].getMessage()
    await assert_nothing_stored(relay_db)


async def test_the_service_runs_the_relay_for_its_lifetime(relay_db, migrated, caplog):
    caplog.set_level(logging.WARNING, logger="portico.webhooks.relay")
    with refused_port() as port:
        settings = WebhooksSettings(
            **{**settings_kwargs(migrated, "webhooks"), "database_url": relay_db.url},
            orders_url=f"http://127.0.0.1:{port}",
            relay_interval_seconds=0.02,
            relay_max_backoff_seconds=0.05,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app) as state:
            relay = state["app"].context.relay
            assert isinstance(relay, OrdersRelay)

            async def running() -> bool:
                return bool(retries_logged(caplog))

            await eventually(running)
            [task] = [t for t in asyncio.all_tasks() if t.get_name() == "webhooks-relay"]
        # The lifespan's end stopped the relay, without needing to cancel it.
        assert task.done()
        assert not task.cancelled()
        assert not any("cancelled" in r.getMessage() for r in caplog.records if r.name == "portico.webhooks.relay")


# The real orders service: events made by placing and cancelling orders through the gateway.


@contextlib.asynccontextmanager
async def registry_on(db: HooksDb, migrated: Servers) -> AsyncIterator[httpx.AsyncClient]:
    """The webhooks API on the test's own database (its relay is the one the test drives)."""
    settings = WebhooksSettings(
        **{**settings_kwargs(migrated, "webhooks"), "database_url": db.url}, relay_enabled=False
    )
    clients = app_client(create_app(settings))
    try:
        yield await anext(clients)
    finally:
        await clients.aclose()


async def register(client: httpx.AsyncClient, signer: IdentitySigner, tenant_id: str, **body) -> dict:
    identity = Identity(subject="admin", tenant_id=tenant_id, scopes=frozenset({"webhooks:write"}), plan="pro")
    created = await client.post(
        "/endpoints",
        json={"url": "https://93.184.215.14/hooks", **body},
        headers=internal_headers(signer, "webhooks", identity),
    )
    assert created.status_code == 201, created.text
    return created.json()


async def drain(relay: OrdersRelay) -> int:
    """Runs batches until the feed has nothing new; answers how many batches that took."""
    batches = 0
    while await relay.run_once() is not None:
        batches += 1
    return batches


async def skip_to_the_end(db: HooksDb, http: httpx.AsyncClient, signer: IdentitySigner, orders_url: str) -> int:
    await drain(relay_for(db, http, signer, orders_url, batch_size=500))
    return await relay_for(db, http, signer, orders_url).position()


@contextlib.asynccontextmanager
async def cursor_row_locked(db: HooksDb) -> AsyncIterator[None]:
    """Holds the relay's cursor row, so a batch stops at its last statement, everything else written."""
    conn = await asyncpg.connect(db.dsn)
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute("SELECT position FROM webhook_relay_cursors WHERE source = 'orders' FOR UPDATE")
        yield
    finally:
        await transaction.rollback()
        await conn.close()


async def blocked_relay_backend(db: HooksDb) -> int:
    """The backend of the relay waiting on the cursor row, once it has written the batch's deliveries."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        conn = await asyncpg.connect(db.dsn)
        try:
            pid = await conn.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
                " AND query ILIKE '%webhook_relay_cursors%'"
            )
            if pid is not None:
                wrote = await conn.fetchval(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                    " WHERE l.pid = $1 AND c.relname = ANY($2) AND l.mode = 'RowExclusiveLock'",
                    pid,
                    ["webhook_events", "webhook_deliveries"],
                )
                assert wrote == 2, "the relay should be stopped after writing events and deliveries"
                return int(pid)
        finally:
            await conn.close()
        await asyncio.sleep(0.02)
    raise AssertionError("the relay never reached its cursor update")


async def last_order_event(migrated: Servers) -> int:
    """The seq of the newest event in the orders service's outbox."""
    [row] = await db_fetch(migrated, "orders", "SELECT max(seq) AS seq FROM outbox")
    return int(row["seq"])


async def counts(db: HooksDb, tenant_id: str, endpoints: dict[str, dict]) -> dict[str, object]:
    conn = await asyncpg.connect(db.dsn)
    try:
        seen: dict[str, object] = {
            "events": await conn.fetchval("SELECT count(*) FROM webhook_events WHERE tenant_id = $1", tenant_id),
            "position": await conn.fetchval("SELECT coalesce(max(position), 0) FROM webhook_relay_cursors"),
        }
        for name, endpoint in endpoints.items():
            rows = await conn.fetch(
                "SELECT event_id, event_type, status FROM webhook_deliveries WHERE endpoint_id = $1", endpoint["id"]
            )
            seen[name] = sorted((r["event_type"], r["status"]) for r in rows)
            assert len({r["event_id"] for r in rows}) == len(rows)
        return seen
    finally:
        await conn.close()


async def test_each_event_reaches_each_matching_endpoint_exactly_once(relay_db, http, signer, migrated, stack, gateway):
    shop = await Shop.open(gateway)
    async with registry_on(relay_db, migrated) as registry:
        endpoints = {
            "created_only": await register(registry, signer, shop.tenant_id, events=["order.created"]),
            "both": await register(registry, signer, shop.tenant_id, events=["order.created", "order.cancelled"]),
            "disabled": await register(
                registry, signer, shop.tenant_id, events=["order.created", "order.cancelled"], enabled=False
            ),
            "other_tenant": await register(
                registry, signer, str(uuid.uuid4()), events=["order.created", "order.cancelled"]
            ),
        }
        # Past what earlier tests put in the feed, so the batches below are this tenant's events.
        start = await skip_to_the_end(relay_db, http, signer, stack.url("orders"))
        order_ids = [await shop.order() for _ in range(6)]
        for order_id in order_ids[:2]:
            await shop.cancel(order_id)
        expected = {
            "events": 8,
            "created_only": [("order.created", "pending")] * 6,
            "both": sorted([("order.created", "pending")] * 6 + [("order.cancelled", "pending")] * 2),
            "disabled": [],
            "other_tenant": [],
        }

        relay = relay_for(relay_db, http, signer, stack.url("orders"), batch_size=3)
        first = await relay.run_once()
        assert first is not None
        assert first.read == 3

        # A crash in the middle of a batch: stopped after writing its events and deliveries, before
        # its cursor, then gone. Nothing of it may remain.
        before = await counts(relay_db, shop.tenant_id, endpoints)
        async with cursor_row_locked(relay_db):
            batch = asyncio.create_task(relay.run_once())
            await blocked_relay_backend(relay_db)
            batch.cancel()
            with pytest.raises(asyncio.CancelledError):
                await batch
        assert await counts(relay_db, shop.tenant_id, endpoints) == before

        await drain(relay)
        stored = await counts(relay_db, shop.tenant_id, endpoints)
        assert {k: v for k, v in stored.items() if k != "position"} == expected
        # The cursor stands at the orders service's last event: this tenant's last cancellation.
        assert stored["position"] == await last_order_event(migrated)

        # Reading everything again (a lost cursor, a replayed feed) adds nothing.
        await relay_db.fetchval("UPDATE webhook_relay_cursors SET position = $1 RETURNING position", start)
        await drain(relay)
        assert await counts(relay_db, shop.tenant_id, endpoints) == stored

        # Two relays at once (two replicas of the service) add nothing either.
        await relay_db.fetchval("UPDATE webhook_relay_cursors SET position = $1 RETURNING position", start)
        twin = relay_for(relay_db, http, signer, stack.url("orders"), batch_size=2)
        await asyncio.gather(drain(relay), drain(twin))
        assert await counts(relay_db, shop.tenant_id, endpoints) == stored

        # The deliveries, as the tenant pages through them.
        identity = Identity(subject="admin", tenant_id=shop.tenant_id, scopes=frozenset({"webhooks:read"}))
        headers = internal_headers(signer, "webhooks", identity)
        seen, cursor = [], None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = await registry.get(
                f"/endpoints/{endpoints['both']['id']}/deliveries", params=params, headers=headers
            )
            assert page.status_code == 200, page.text
            seen += page.json()["items"]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == 8
        assert len({d["event_id"] for d in seen}) == 8
        assert {d["endpoint_id"] for d in seen} == {endpoints["both"]["id"]}
        assert all(d["status"] == "pending" and d["attempts"] == 0 for d in seen)


async def test_an_endpoint_gets_only_what_happens_after_it_is_registered(
    relay_db, http, signer, migrated, stack, gateway
):
    shop = await Shop.open(gateway)
    earlier = await shop.order()
    async with registry_on(relay_db, migrated) as registry:
        endpoint = await register(registry, signer, shop.tenant_id, events=["order.created", "order.cancelled"])
        await shop.cancel(earlier)
        await shop.order()
        relay = relay_for(relay_db, http, signer, stack.url("orders"))
        await drain(relay)
        stored = await counts(relay_db, shop.tenant_id, {"endpoint": endpoint})
        assert stored["events"] == 3
        assert stored["endpoint"] == [("order.cancelled", "pending"), ("order.created", "pending")]


async def test_a_relay_process_killed_mid_batch_leaves_nothing_and_relays_exactly_once_after_restart(
    relay_db, http, signer, migrated, stack, gateway, tmp_path
):
    """The webhooks service's own relay, in a real process: SIGKILLed while a batch is written (its
    events and deliveries inserted, its cursor update waiting on a lock this test holds), nothing of
    that batch remains; the process started again relays every event exactly once."""
    shop = await Shop.open(gateway)
    async with registry_on(relay_db, migrated) as registry:
        endpoints = {
            "both": await register(registry, signer, shop.tenant_id, events=["order.created", "order.cancelled"]),
        }
    await skip_to_the_end(relay_db, http, signer, stack.url("orders"))
    order_ids = [await shop.order() for _ in range(4)]
    await shop.cancel(order_ids[0])
    expected = sorted([("order.created", "pending")] * 4 + [("order.cancelled", "pending")])
    before = await counts(relay_db, shop.tenant_id, endpoints)
    assert before["both"] == []

    relay_process = ServiceProcess(
        "webhooks",
        service_env(migrated),
        tmp_path / "logs",
        ROOT,
        own_env={
            "WEBHOOKS_DATABASE_URL": relay_db.url,
            "WEBHOOKS_ORDERS_URL": stack.url("orders"),
            "WEBHOOKS_RELAY_BATCH_SIZE": "2",
            "WEBHOOKS_RELAY_INTERVAL_SECONDS": "0.05",
        },
    )
    try:
        async with cursor_row_locked(relay_db):
            await asyncio.to_thread(relay_process.start)
            backend = await blocked_relay_backend(relay_db)  # the batch is written, not committed
            await asyncio.to_thread(relay_process.kill)
        # Its database session ends with it, rolled back: wait for the server to notice.

        async def backend_gone() -> bool:
            return await relay_db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", backend) == 0

        await eventually(backend_gone)
        assert await counts(relay_db, shop.tenant_id, endpoints) == before

        await asyncio.to_thread(relay_process.start)

        async def relayed() -> bool:
            return (await counts(relay_db, shop.tenant_id, endpoints))["position"] == await last_order_event(migrated)

        await eventually(relayed)
    finally:
        await asyncio.to_thread(relay_process.stop)
    stored = await counts(relay_db, shop.tenant_id, endpoints)
    assert stored["events"] == 5
    assert stored["both"] == expected


# Traces: a poll is traced only when it carries events.

TRACE_A = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_B = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def feed_page(next_after: int, *events: tuple[int, str | None]) -> bytes:
    items = [
        {
            "seq": seq,
            "id": str(uuid.uuid4()),
            "type": "order.created",
            "tenant_id": "t",
            "created_at": "2026-01-01T00:00:00+00:00",
            "data": {"id": str(seq)},
            "traceparent": traceparent,
        }
        for seq, traceparent in events
    ]
    return http_answer(200, json.dumps({"items": items, "next_after": next_after}).encode())


async def test_only_a_batch_that_carries_events_is_traced_and_it_links_to_their_traces(relay_db, http, signer):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrument_engine(relay_db.engine, provider)
    answers = (
        feed_page(0),  # nothing new
        feed_page(7),  # nothing carried, but the feed moved on (its events were pruned): the cursor follows
        feed_page(7),
        feed_page(9, (8, TRACE_A), (9, TRACE_B)),
    )
    async with feed_answering(*answers) as url:
        relay = relay_for(relay_db, http, signer, url, tracer=provider.get_tracer("relay"))
        assert await relay.run_once() is None
        moved = await relay.run_once()
        assert moved is not None
        assert (moved.read, moved.position) == (0, 7)
        assert await relay.run_once() is None
        # Three polls, the cursor moved once: no span at all, SQL included.
        assert exporter.get_finished_spans() == ()
        stored = await relay.run_once()
    assert stored is not None
    assert (stored.events, stored.position) == (2, 9)
    spans = exporter.get_finished_spans()
    [batch] = [s for s in spans if s.name == "webhooks.relay batch"]
    assert batch.parent is None
    linked = {format(link.context.trace_id, "032x") for link in batch.links}
    assert linked == {TRACE_A.split("-")[1], TRACE_B.split("-")[1]}
    sql = [s for s in spans if s is not batch]
    assert sql
    assert all(s.context.trace_id == batch.context.trace_id for s in sql)


class Feed:
    """An orders feed on a real socket, serving the events a test gives it after the position asked
    for, and counting the polls it serves."""

    def __init__(self) -> None:
        self.events: list[tuple[int, str | None]] = []
        self.head = 0
        self.polls = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode()
            after = int(parse_qs(urlsplit(target).query).get("after", ["0"])[0])
            self.polls += 1
            writer.write(feed_page(self.head, *(e for e in self.events if e[0] > after)))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_the_services_relay_traces_nothing_while_idle(relay_db, migrated, otlp, tmp_path):
    """The webhooks service as a real process, exporting its spans: polls that carry nothing (the
    cursor moving on included) make no span; a batch of events makes one, its SQL inside it."""
    feed = Feed()
    server = await asyncio.start_server(feed.handle, "127.0.0.1", 0)
    service = f"webhooks-{uuid.uuid4().hex[:8]}"
    process = ServiceProcess(
        "webhooks",
        service_env(migrated),
        tmp_path / "logs",
        ROOT,
        own_env={
            "WEBHOOKS_DATABASE_URL": relay_db.url,
            "WEBHOOKS_ORDERS_URL": f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
            "WEBHOOKS_RELAY_INTERVAL_SECONDS": "0.05",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_SERVICE_NAME": service,
        },
    )

    def relay_spans() -> list:
        # Calls to the orders service are the HTTP client's spans, not the relay's own.
        return [s for s in otlp.spans if s.service == service and s.attributes.get("peer.service") != "orders"]

    async def polled(times: int) -> bool:
        return feed.polls >= times

    try:
        await asyncio.to_thread(process.start)
        await eventually(lambda: polled(5))
        feed.head = 7
        await eventually(lambda: _cursor_at(relay_db, 7))
        mark = feed.polls
        await eventually(lambda: polled(mark + 5))
        feed.events, feed.head = [(8, TRACE_A), (9, TRACE_B)], 9
        await eventually(lambda: _cursor_at(relay_db, 9))

        async def exported() -> bool:
            return any(s.name == "webhooks.relay batch" for s in relay_spans())

        await eventually(exported)
    finally:
        await asyncio.to_thread(process.stop)
        server.close()
    spans = relay_spans()
    [batch] = [s for s in spans if s.name == "webhooks.relay batch"]
    # Everything else it traced is the batch's SQL, in the batch's trace.
    assert {s.trace_id for s in spans} == {batch.trace_id}
    assert len(spans) > 1


async def _cursor_at(db: HooksDb, position: int) -> bool:
    return await db.fetchval("SELECT coalesce(max(position), 0) FROM webhook_relay_cursors") == position
