"""The connections' side: one subscription per tenant per gateway instance, shared by all of that
tenant's connections on it, and each connection's bounded buffer.

A tenant's `Channel` is one task reading the tenant's stream (a blocking read) and handing each event
to every `Subscriber` of the tenant. A subscriber buffers at most `buffer_size` events; a connection
that falls further behind (a stalled reader) is `overflowed` and closed, and its client resumes with
the last id it saw. Nothing here grows with a slow client.

`Hub.stream(tenant, after)` is what a connection iterates: with `after`, first everything after it
(from the stream, or from the orders feed for what the stream has trimmed), then the live events,
each exactly once, in id order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator

from gateway.realtime.relay import OrdersFeed
from gateway.realtime.store import EventStore, StreamEvent
from shared.events import FEED_MAX_LIMIT

logger = logging.getLogger("portico.gateway.realtime")

# How long one blocking read of a tenant's stream waits before it looks again.
READ_WAIT_SECONDS = 1.0
READ_COUNT = 100


class Overflowed(Exception):
    """The connection fell more than its buffer behind and is closed."""


class Subscriber:
    __slots__ = ("buffer", "limit", "overflowed", "ready", "start")

    def __init__(self, limit: int, start: int) -> None:
        self.buffer: deque[StreamEvent] = deque()
        self.limit = limit
        self.overflowed = False
        self.ready = asyncio.Event()
        # The channel's position when this subscriber joined: every later event reaches its buffer.
        self.start = start

    def offer(self, event: StreamEvent) -> None:
        if self.overflowed:
            return
        if len(self.buffer) >= self.limit:
            self.overflowed = True
            self.buffer.clear()
        else:
            self.buffer.append(event)
        self.ready.set()

    async def next(self) -> StreamEvent:
        while not self.buffer:
            if self.overflowed:
                raise Overflowed
            self.ready.clear()
            await self.ready.wait()
        if self.overflowed:
            raise Overflowed
        return self.buffer.popleft()


class Admission:
    """One open real-time connection of a tenant on this instance, counted until released."""

    __slots__ = ("hub", "released", "tenant_id")

    def __init__(self, hub: Hub, tenant_id: str) -> None:
        self.hub = hub
        self.tenant_id = tenant_id
        self.released = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        left = self.hub.open[self.tenant_id] - 1
        if left:
            self.hub.open[self.tenant_id] = left
        else:
            del self.hub.open[self.tenant_id]


class Channel:
    """One tenant's subscription on this instance."""

    def __init__(self, hub: Hub, tenant_id: str, position: int) -> None:
        self.hub = hub
        self.tenant_id = tenant_id
        self.position = position
        self.subscribers: set[Subscriber] = set()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        failures = 0
        while self.subscribers:
            try:
                events = await self.hub.store.wait(self.tenant_id, self.position, READ_COUNT, READ_WAIT_SECONDS)
            except Exception:
                failures += 1
                logger.exception("reading the events of tenant %s failed (failure %d)", self.tenant_id, failures)
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))
                continue
            failures = 0
            for event in events:
                if event.id <= self.position:
                    continue
                self.position = event.id
                for subscriber in self.subscribers:
                    subscriber.offer(event)


class Hub:
    def __init__(self, store: EventStore, feed: OrdersFeed, *, buffer_size: int) -> None:
        self.store = store
        self.feed = feed
        self.buffer_size = buffer_size
        self.channels: dict[str, Channel] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        # Open connections (SSE and WebSocket) per tenant on this instance.
        self.open: dict[str, int] = {}

    def admit(self, tenant_id: str, cap: int) -> Admission | None:
        """Counts one more connection of the tenant, or None when it holds `cap` already."""
        count = self.open.get(tenant_id, 0)
        if count >= cap:
            return None
        self.open[tenant_id] = count + 1
        return Admission(self, tenant_id)

    async def subscribe(self, tenant_id: str) -> Subscriber:
        channel = self.channels.get(tenant_id)
        if channel is None:
            lock = self._opening.setdefault(tenant_id, asyncio.Lock())
            async with lock:
                channel = self.channels.get(tenant_id)
                if channel is None:
                    channel = Channel(self, tenant_id, await self.store.last_id(tenant_id))
                    self.channels[tenant_id] = channel
            self._opening.pop(tenant_id, None)
        subscriber = Subscriber(self.buffer_size, channel.position)
        channel.subscribers.add(subscriber)
        if channel.task is None or channel.task.done():
            channel.task = asyncio.create_task(channel.run(), name=f"realtime-channel-{tenant_id}")
        return subscriber

    def unsubscribe(self, tenant_id: str, subscriber: Subscriber) -> None:
        channel = self.channels.get(tenant_id)
        if channel is None:
            return
        channel.subscribers.discard(subscriber)
        if not channel.subscribers:
            # The last connection of the tenant here: the subscription ends with it.
            del self.channels[tenant_id]
            if channel.task is not None:
                channel.task.cancel()

    async def close(self) -> None:
        tasks = [channel.task for channel in self.channels.values() if channel.task is not None]
        self.channels.clear()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)

    async def backlog(self, tenant_id: str, after: int) -> AsyncIterator[StreamEvent]:
        """Every event of the tenant after `after` that is stored now, in id order: from the stream,
        and from the orders feed for what the stream has trimmed."""
        cursor = after
        while True:
            floor = await self.store.floor(tenant_id)
            if cursor < floor:
                page = await self.feed.page(cursor, FEED_MAX_LIMIT, tenant_id)
                for item in page.items:
                    if item.tenant_id == tenant_id and item.seq > cursor:
                        yield StreamEvent.from_feed(item)
                        cursor = item.seq
                if len(page.items) < FEED_MAX_LIMIT:
                    # The feed has nothing more of the tenant's up to now: the stream has the rest.
                    events = await self.store.after(tenant_id, max(cursor, floor), READ_COUNT)
                    if not events:
                        return
                    for event in events:
                        yield event
                        cursor = event.id
                continue
            events = await self.store.after(tenant_id, cursor, READ_COUNT)
            if not events:
                return
            for event in events:
                yield event
                cursor = event.id

    async def stream(self, tenant_id: str, after: int | None) -> AsyncIterator[StreamEvent]:
        """The tenant's events after `after` (None: from now on), live, each once, in order.
        Raises `Overflowed` when the reader fell more than its buffer behind."""
        subscriber = await self.subscribe(tenant_id)
        try:
            last = subscriber.start if after is None else after
            if after is not None:
                async for event in self.backlog(tenant_id, after):
                    if subscriber.overflowed:
                        raise Overflowed
                    yield event
                    last = event.id
            while True:
                event = await subscriber.next()
                if event.id > last:
                    yield event
                    last = event.id
        finally:
            self.unsubscribe(tenant_id, subscriber)
