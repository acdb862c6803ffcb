"""The real-time hub in-process against the stack's orders service and the session's Redis: resuming
from before what a stream still holds, and a stalled reader cut off while the others keep receiving."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

from gateway.app import create_redis
from gateway.realtime.hub import Hub, Overflowed
from gateway.realtime.relay import EventRelay, OrdersFeed
from gateway.realtime.store import MemoryEventStore, RedisEventStore, StreamEvent
from scripts.devstack import Stack
from shared.http import ServiceClient, create_http_client
from shared.identity import IdentitySigner
from tests.conftest import INTERNAL_SECRET
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
        await until(lambda: tenant in hub.channels and len(hub.channels[tenant].subscribers) == 2, "both subscribed")
        for seq in range(1, 41):
            await store.append(tenant, [StreamEvent(seq, "order.created", "{}")])
        got = await receiving
        assert [e.id for e in got] == list(range(1, 41))
        assert (await first_stalled).id == 1
        # It read one event and then nothing while 39 more came: past its buffer of 5, it is cut off.
        with pytest.raises(Overflowed):
            await anext(stalled)
        await stalled.aclose()
        await fast.aclose()
        assert tenant not in hub.channels  # the last connection gone, the subscription ends
    finally:
        await hub.close()
        await redis.aclose()
        await blocking.aclose()
