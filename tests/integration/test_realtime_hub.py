"""The real-time hub and relay in-process against the stack's orders service and the session's Redis:
one reader for every tenant on an instance, resuming from before what a stream still holds, a stalled
reader cut off while the others keep receiving, an instance that fell behind the live stream's trim
ending its connections, and the relay's spans."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg
import httpx
import pytest
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import create_redis
from gateway.realtime.hub import Expired, Hub, Lagged, NeverSent, Overflowed
from gateway.realtime.relay import EventRelay, OrdersFeed
from gateway.realtime.streams import EventStore, MemoryEventStore, RedisEventStore, StreamEvent
from gateway.routes.events import MAX_EVENT_ID, until_done
from scripts.devstack import Stack, free_port
from services.orders.app import create_app as create_orders_app
from services.orders.settings import OrdersSettings
from shared.errors import UpstreamError
from shared.http import ServiceClient
from shared.identity_token import IdentitySigner
from shared.migrations import upgrade
from shared.pool import create_http_client
from tests.conftest import INTERNAL_SECRET, ROOT, app_client, settings_kwargs
from tests.e2e.test_realtime import place_and_cancel, until
from tests.edge_support import gateway_settings, signup, unique_prefix
from tests.infra import Servers


@pytest.fixture
async def feed(stack: Stack):
    settings = gateway_settings(stack)
    http = create_http_client(settings, TracerProvider())
    try:
        yield OrdersFeed(ServiceClient("orders", stack.url("orders"), http, IdentitySigner(INTERNAL_SECRET, 60)))
    finally:
        await http.aclose()


StoreOf = Callable[[int], EventStore]


@pytest.fixture(params=["memory", "redis"])
async def store_of(request: pytest.FixtureRequest, migrated: Servers) -> AsyncIterator[StoreOf]:
    """Makes a store keeping about `maxlen` events per stream: in-process, or in the session's Redis
    under a prefix of its own with ONE connection for the blocking reads."""
    if request.param == "memory":
        yield MemoryEventStore
        return
    settings = gateway_settings(
        None, redis_url=migrated.redis_url, redis_key_prefix=unique_prefix(migrated.redis_prefix)
    )
    redis = create_redis(settings)
    blocking = create_redis(settings.model_copy(update={"redis_max_connections": 1}), wait_seconds=1.0)
    try:
        yield lambda maxlen: RedisEventStore(redis, blocking, settings.redis_key_prefix, maxlen)
    finally:
        await redis.aclose()
        await blocking.aclose()


async def test_one_reader_serves_every_tenant_and_tenants_never_cross(store_of: StoreOf, feed: OrdersFeed):
    store = store_of(1000)
    hub = Hub(store, feed, buffer_size=10)
    tenants = [str(uuid.uuid4()) for _ in range(30)]
    streams = [hub.stream(tenant, None) for tenant in tenants]
    try:
        receiving = [asyncio.create_task(take(stream, 2)) for stream in streams]
        await until(lambda: len(hub.subscribers) == len(tenants), "every tenant subscribed")
        # Two events of every tenant, interleaved, in one batch (as the relay adds them).
        await store.append(
            [StreamEvent(seq, tenants[(seq - 1) % len(tenants)], "order.created", "{}") for seq in range(1, 61)]
        )
        for index, (tenant, got) in enumerate(zip(tenants, await asyncio.gather(*receiving), strict=True)):
            assert [e.tenant_id for e in got] == [tenant, tenant]
            assert [e.id for e in got] == [index + 1, index + 1 + len(tenants)]
    finally:
        for stream in streams:
            await stream.aclose()
        await hub.close()


async def test_an_instance_that_fell_behind_the_live_streams_trim_ends_its_connections(
    store_of: StoreOf, feed: OrdersFeed
):
    """The live stream trimmed events this instance had not read: its connections end (their clients
    resume from their last ids, which their tenants' streams have), and new ones are served."""
    store = store_of(10)
    hub = Hub(store, feed, buffer_size=1000)
    acme, other = str(uuid.uuid4()), str(uuid.uuid4())
    first, second = hub.stream(acme, None), hub.stream(other, None)
    try:
        ending = [asyncio.create_task(take(stream, 1)) for stream in (first, second)]
        await until(lambda: len(hub.subscribers) == 2, "both subscribed")
        # Far more than the live stream keeps, added before the reader can read any of it.
        await store.append([StreamEvent(seq, (acme, other)[seq % 2], "order.created", "{}") for seq in range(1, 301)])
        for task in ending:
            with pytest.raises(Lagged):
                await task
        later = hub.stream(acme, None)
        try:
            receiving = asyncio.create_task(take(later, 1))
            await until(lambda: acme in hub.subscribers, "the new connection subscribed")
            await store.append([StreamEvent(301, acme, "order.created", "{}")])
            assert [e.id for e in await receiving] == [301]
        finally:
            await later.aclose()
    finally:
        await first.aclose()
        await second.aclose()
        await hub.close()


async def test_a_stream_stopped_at_any_moment_of_its_redis_calls_ends(migrated: Servers, feed: OrdersFeed):
    """A stream stopped while it subscribes (its credentials expired the moment it opened) ends, at
    whichever point of a Redis call the stop lands. On Python 3.11 a cancel that lands as redis-py's
    inner `asyncio.wait_for` finishes is lost, and a single cancel would leave the stream waiting for
    events for good, its connection held."""
    settings = gateway_settings(
        None, redis_url=migrated.redis_url, redis_key_prefix=unique_prefix(migrated.redis_prefix)
    )
    redis, blocking = create_redis(settings), create_redis(settings, wait_seconds=1.0)
    store = RedisEventStore(redis, blocking, settings.redis_key_prefix, maxlen=1000)
    try:
        for steps in range(60):
            hub = Hub(store, feed, buffer_size=10)
            expired = asyncio.Event()
            stop = asyncio.create_task(expired.wait())
            consuming = asyncio.create_task(consume(until_done(hub.stream(str(uuid.uuid4()), None), stop)))
            for _ in range(steps % 30):
                await asyncio.sleep(0)
            expired.set()
            done, _ = await asyncio.wait({consuming}, timeout=5)
            assert consuming in done, f"the stream stopped after {steps % 30} steps did not end"
            assert consuming.result() == []
            await hub.close()
    finally:
        await redis.aclose()
        await blocking.aclose()


async def consume(events) -> list[StreamEvent]:
    return [event async for event in events]


async def take(events, count: int) -> list[StreamEvent]:
    async def collect() -> list[StreamEvent]:
        got = []
        async for event in events:
            got.append(event)
            if len(got) == count:
                break
        return got

    return await asyncio.wait_for(collect(), 30)


async def test_resuming_before_the_stream_reads_the_rest_from_the_feed(gateway: httpx.AsyncClient, feed: OrdersFeed):
    acme = await signup(gateway)
    await place_and_cancel(gateway, acme, 7)  # 8 events
    store = MemoryEventStore(maxlen=3)
    relay = EventRelay(feed, store, redis=None, prefix="", interval=0.1, batch_size=500, lease_seconds=1)
    while await relay.run_once():
        pass
    expected = [e.seq for e in (await feed.page(0, 500, acme.id)).items]
    assert len(expected) == 8
    # The stream holds the last three only.
    assert await store.floor(acme.id) == expected[4]
    hub = Hub(store, feed, buffer_size=100)
    try:
        resumed = await take(hub.stream(acme.id, expected[0]), 7)
        assert [e.id for e in resumed] == expected[1:]
        assert [e.type for e in resumed][-1] == "order.cancelled"
    finally:
        await hub.close()


async def test_a_stalled_reader_is_cut_off_while_others_keep_receiving(migrated: Servers, feed: OrdersFeed):
    settings = gateway_settings(
        None, redis_url=migrated.redis_url, redis_key_prefix=unique_prefix(migrated.redis_prefix)
    )
    redis, blocking = create_redis(settings), create_redis(settings, wait_seconds=1.0)
    store = RedisEventStore(redis, blocking, settings.redis_key_prefix, maxlen=1000)
    hub = Hub(store, feed, buffer_size=5)
    tenant = str(uuid.uuid4())
    try:
        stalled, fast = hub.stream(tenant, None), hub.stream(tenant, None)
        first_stalled = asyncio.create_task(anext(stalled))
        receiving = asyncio.create_task(take(fast, 40))
        await until(lambda: len(hub.subscribers.get(tenant, ())) == 2, "both subscribed")
        for seq in range(1, 41):
            await store.append([StreamEvent(seq, tenant, "order.created", "{}")])
        got = await receiving
        assert [e.id for e in got] == list(range(1, 41))
        assert (await first_stalled).id == 1
        # It read one event and then nothing while 39 more came: past its buffer of 5, it is cut off.
        with pytest.raises(Overflowed):
            await anext(stalled)
        await stalled.aclose()
        await fast.aclose()
        assert tenant not in hub.subscribers  # the last connection gone, the subscription ends
    finally:
        await hub.close()
        await redis.aclose()
        await blocking.aclose()


@pytest.fixture
async def own_orders_database(migrated: Servers):
    """An orders database of this test's own: its retention removes events no other test reads."""
    name = f"portico_test_{migrated.run_id}_orders_retention"
    admin = await asyncpg.connect(migrated.pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = migrated.pg_admin_dsn.rpartition("/")[0]
    await asyncio.to_thread(
        upgrade, ROOT / "services" / "orders", f"postgresql+asyncpg://{base.split('://', 1)[1]}/{name}"
    )
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(migrated.pg_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def insert_events(database: str, tenant: str, ages: Sequence[str]) -> list[int]:
    """Writes one event of `tenant` per age (`'2 hours'`) into the orders database's outbox; their seqs."""
    conn = await asyncpg.connect(database)
    try:
        return [
            await conn.fetchval(
                "INSERT INTO outbox (id, tenant_id, type, data, created_at) "
                f"VALUES ($1, $2, 'order.created', '{{}}', now() - interval '{age}') RETURNING seq",
                str(uuid.uuid4()),
                tenant,
            )
            for age in ages
        ]
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def own_orders_feed(
    migrated: Servers, stack: Stack, database: str, **overrides: Any
) -> AsyncIterator[OrdersFeed]:
    """The feed of an in-process orders service on `database`, with `overrides` of its settings."""
    settings = OrdersSettings(
        **{
            **settings_kwargs(migrated, "orders"),
            "database_url": database.replace("postgresql://", "postgresql+asyncpg://", 1),
        },
        users_url=stack.url("users"),
        inventory_url=stack.url("inventory"),
        db_pool_size=2,
        db_max_overflow=2,
        **overrides,
    )
    async for orders in app_client(create_orders_app(settings)):
        yield OrdersFeed(ServiceClient("orders", "http://test", orders, IdentitySigner(INTERNAL_SECRET, 60)))


async def test_resuming_from_before_the_retention_is_refused(migrated: Servers, stack: Stack, own_orders_database):
    tenant = str(uuid.uuid4())
    seqs = await insert_events(own_orders_database, tenant, ("2 hours", "1 hour", "0 seconds"))
    async with own_orders_feed(
        migrated, stack, own_orders_database, events_retention_seconds=60, recovery_interval_seconds=0.1
    ) as feed:
        # The recovery task removes the two old events and says up to where.
        await until_async(functools.partial(_pruned, feed, seqs[1]), "the retention to run")
        store = MemoryEventStore(maxlen=100)
        relay = EventRelay(feed, store, redis=None, prefix="", interval=0.1, batch_size=500, lease_seconds=1)
        while await relay.run_once():
            pass
        hub = Hub(store, feed, buffer_size=10)
        try:
            with pytest.raises(Expired) as expired:
                await hub.check_resumable(tenant, seqs[0])
            assert expired.value.pruned_through == seqs[1]
            # From the last removed event on, nothing is missing: the resume goes ahead.
            await hub.check_resumable(tenant, seqs[1])
            assert [e.id for e in await take(hub.stream(tenant, seqs[1]), 1)] == [seqs[2]]
        finally:
            await hub.close()


async def test_resuming_from_past_every_event_written_is_refused(migrated: Servers, stack: Stack, own_orders_database):
    """An id above the newest event the feed ever had is no id this API sent, whoever asks (ids are
    every tenant's); every id up to it resumes."""
    tenant, other = str(uuid.uuid4()), str(uuid.uuid4())
    seqs = await insert_events(own_orders_database, tenant, ("1 minute", "0 seconds"))
    async with own_orders_feed(migrated, stack, own_orders_database) as feed:
        hub = Hub(MemoryEventStore(maxlen=100), feed, buffer_size=10)
        try:
            for known in (0, seqs[0] - 1, seqs[0], seqs[1]):
                await hub.check_resumable(tenant, known)
                await hub.check_resumable(other, known)
            for never in (seqs[1] + 1, MAX_EVENT_ID):
                for asking in (tenant, other):
                    with pytest.raises(NeverSent):
                        await hub.check_resumable(asking, never)
        finally:
            await hub.close()


@pytest.fixture
async def unreachable_feed() -> AsyncIterator[OrdersFeed]:
    """A feed whose orders service refuses every connection."""
    http = create_http_client(gateway_settings(None), TracerProvider())
    try:
        signer = IdentitySigner(INTERNAL_SECRET, 60)
        yield OrdersFeed(ServiceClient("orders", f"http://127.0.0.1:{free_port()}", http, signer))
    finally:
        await http.aclose()


async def test_with_the_feed_down_only_an_id_the_live_stream_has_resumes(
    store_of: StoreOf, unreachable_feed: OrdersFeed
):
    """Without the orders feed only the store can vouch for an id: one up to the live stream's newest
    event resumes from the tenant's stream; one past it (made up, or ahead of a stream that is behind
    the feed) is told the feed failed, to come back, rather than given a stream that stays silent."""
    store = store_of(100)
    tenant = str(uuid.uuid4())
    await store.append([StreamEvent(seq, tenant, "order.created", "{}") for seq in (3, 5)])
    hub = Hub(store, unreachable_feed, buffer_size=10)
    try:
        for known in (0, 3, 5):
            await hub.check_resumable(tenant, known)
        with pytest.raises(UpstreamError):
            await hub.check_resumable(tenant, 6)
    finally:
        await hub.close()


async def _pruned(feed: OrdersFeed, through: int) -> bool:
    return (await feed.page(0, 1)).pruned_through >= through


async def until_async(condition, what: str, deadline: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not await condition():
        if loop.time() > end:
            raise AssertionError(f"waited {deadline}s for {what}")
        await asyncio.sleep(0.1)


async def test_an_idle_relay_makes_no_span_and_a_batch_one_linked_to_its_events(
    migrated: Servers, gateway: httpx.AsyncClient, feed: OrdersFeed
):
    """A poll that finds nothing is no span, its Redis calls (and the lease's release) included; a
    batch that carries events is one span, linked to the traces that wrote them."""
    provider = TracerProvider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    settings = gateway_settings(
        None, redis_url=migrated.redis_url, redis_key_prefix=unique_prefix(migrated.redis_prefix)
    )
    redis = create_redis(settings)
    # Recorded as the gateway records its Redis calls. (The feed's HTTP calls go through the pooled
    # client's own span layer, on a provider of their own here.)
    RedisInstrumentor.instrument_client(redis, tracer_provider=provider)
    relay = EventRelay(
        feed,
        RedisEventStore(redis, redis, settings.redis_key_prefix, maxlen=1000),
        redis=redis,
        prefix=settings.redis_key_prefix,
        interval=0.05,
        batch_size=500,
        lease_seconds=3,
        tracer=provider.get_tracer("portico.gateway.realtime"),
    )
    try:
        # Up to the feed's end (this session's earlier events), then nothing new.
        while await relay.run_once():
            pass
        spans.clear()
        stop = asyncio.Event()
        looping = asyncio.create_task(relay.run(stop))
        await asyncio.sleep(1.0)  # about 20 polls
        stop.set()
        await looping
        assert [span.name for span in spans.get_finished_spans()] == []
        assert await redis.exists(f"{settings.redis_key_prefix}events:{{relay}}:lease") == 0  # let go
        spans.clear()

        acme = await signup(gateway)
        trace_id = os.urandom(16).hex()
        product = await gateway.post(
            "/v1/products",
            json={"sku": f"RELAY-{uuid.uuid4().hex[:8]}", "name": "Mug", "price_cents": 100, "stock": 10},
            headers=acme.auth,
        )
        assert product.status_code == 201, product.text
        order = await gateway.post(
            "/v1/orders",
            json={"items": [{"product_id": product.json()["id"], "quantity": 1}]},
            headers={**acme.auth, "traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"},
        )
        assert order.status_code == 201, order.text
        read = 0
        while not read:
            read = await relay.run_once()
        [batch] = spans.get_finished_spans()
        assert batch.name == "events.relay"
        assert batch.parent is None
        assert batch.attributes is not None
        assert batch.attributes["messaging.batch.message_count"] == read
        assert trace_id in {format(link.context.trace_id, "032x") for link in batch.links}
        assert format(batch.context.trace_id, "032x") != trace_id
    finally:
        await redis.aclose()
