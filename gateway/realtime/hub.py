"""The connections' side: one reader of the live stream per gateway instance, handing each event to
the subscribers of its tenant, and each connection's bounded buffer.

The `Hub`'s reader is one task, started by the first connection on the instance and stopping a
moment after the last one leaves. It reads every tenant's events with one blocking read (one Redis
connection, however many tenants stream here) and hands each to every `Subscriber` of the event's
tenant, and to no other. A subscriber buffers at most `buffer_size` events; a connection that falls
further behind (a stalled reader) is ended (`Overflowed`) and closed, and its client resumes with the
last id it saw. Nothing here grows with a slow client.

When the reader cannot go on, every connection on the instance ends and its client resumes from its
last id, here or on another instance: the live stream failed (`Interrupted`: Redis is down), or it
trimmed entries before the reader read them (`Lagged`: the reader fell that far behind, so some of the
connections' events are only in their tenants' streams now).

`Hub.stream(tenant, after)` is what a connection iterates: with `after`, first everything after it
(from the tenant's stream, or from the orders feed for what the stream has trimmed), then the live
events, each exactly once, in id order.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence

from opentelemetry.instrumentation.utils import suppress_instrumentation
from redis.exceptions import RedisError

from gateway.realtime.relay import OrdersFeed
from gateway.realtime.streams import EventStore, LiveEvent, StreamEvent
from gateway.realtime.tasks import cancel_and_wait
from shared.errors import UpstreamError
from shared.events import FEED_MAX_LIMIT

logger = logging.getLogger("portico.gateway.realtime")

# How long one blocking read of the live stream waits before it looks again (and notices that no
# connection is left).
READ_WAIT_SECONDS = 1.0
# Entries one read of the live stream hands out at most (one relay batch).
READ_COUNT = FEED_MAX_LIMIT


class Overflowed(Exception):
    """The connection fell more than its buffer behind and is closed."""


class Lagged(Overflowed):
    """The instance's reader fell so far behind that the live stream trimmed events it had not read:
    every connection here ends and resumes from its last id, which its tenant's stream still has."""


class Interrupted(Exception):
    """Reading the live stream failed (Redis is down or did not answer): the connection ends and its
    client reconnects with its last id."""


class Expired(Exception):
    """Events after the resume point were removed by the orders feed's retention: the client missed
    some and must resync."""

    def __init__(self, pruned_through: int) -> None:
        super().__init__(f"events up to {pruned_through} are no longer kept")
        self.pruned_through = pruned_through


class NeverSent(Exception):
    """The resume point is past every event the orders feed has ever had: no event has that id, so a
    stream resuming from it would drop every event until the ids caught up."""

    def __init__(self, after: int) -> None:
        super().__init__(f"no event with id {after} or above was ever written")
        self.after = after


class Subscriber:
    __slots__ = ("buffer", "error", "limit", "ready", "start")

    def __init__(self, limit: int, start: int) -> None:
        self.buffer: deque[StreamEvent] = deque()
        self.limit = limit
        # Why the connection ends; raised once the events buffered before it are taken.
        self.error: Exception | None = None
        self.ready = asyncio.Event()
        # The reader's position when this subscriber joined: every later event of its tenant reaches
        # its buffer.
        self.start = start

    def offer(self, event: StreamEvent) -> None:
        if self.error is not None:
            return
        if len(self.buffer) >= self.limit:
            self.buffer.clear()
            self.end(Overflowed())
        else:
            self.buffer.append(event)
            self.ready.set()

    def end(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
            self.ready.set()

    async def next(self) -> StreamEvent:
        while not self.buffer:
            if self.error is not None:
                raise self.error
            self.ready.clear()
            await self.ready.wait()
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
            if not self.hub.open:
                self.hub.idle.set()


class Hub:
    def __init__(self, store: EventStore, feed: OrdersFeed, *, buffer_size: int) -> None:
        self.store = store
        self.feed = feed
        self.buffer_size = buffer_size
        # The subscribers of each tenant with a connection here: the reader's fan-out.
        self.subscribers: dict[str, set[Subscriber]] = {}
        # The id of the newest live event the reader has handed out (or started after).
        self.position = 0
        self.reader: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        # Open connections (SSE and WebSocket) per tenant on this instance.
        self.open: dict[str, int] = {}
        # Set when the process is about to stop: WebSocket connections close with 1013.
        self.draining = asyncio.Event()
        # Set while no connection is open here.
        self.idle = asyncio.Event()
        self.idle.set()

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109
        """Asks every connection to close (the process is stopping) and waits up to `timeout` for them."""
        self.draining.set()
        if self.open:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), timeout)

    def admit(self, tenant_id: str, cap: int) -> Admission | None:
        """Counts one more connection of the tenant, or None when it holds `cap` already."""
        count = self.open.get(tenant_id, 0)
        if count >= cap:
            return None
        self.open[tenant_id] = count + 1
        self.idle.clear()
        return Admission(self, tenant_id)

    async def subscribe(self, tenant_id: str) -> Subscriber:
        """A subscriber of the tenant's live events from now on (starting the reader when it is not
        running). Raises what the store raises when it cannot say where the live stream is."""
        if self.reader is None:
            async with self._starting:
                if self.reader is None:
                    self.position = await self.store.head()
                    # A context of its own: not the first connection's request (its span, its request id).
                    self.reader = asyncio.create_task(
                        self._read(), name="realtime-reader", context=contextvars.Context()
                    )
        # No await from here on: the reader hands this subscriber every event after `position`.
        subscriber = Subscriber(self.buffer_size, self.position)
        self.subscribers.setdefault(tenant_id, set()).add(subscriber)
        return subscriber

    def unsubscribe(self, tenant_id: str, subscriber: Subscriber) -> None:
        subscribers = self.subscribers.get(tenant_id)
        if subscribers is None:
            return
        subscribers.discard(subscriber)
        if not subscribers:
            # The reader stops at its next look when no tenant is left; cancelling its read instead
            # would cost its Redis connection each time the last connection leaves.
            del self.subscribers[tenant_id]

    async def _read(self) -> None:
        """Hands out the live stream's events while any connection is open here; ends them all when
        it cannot go on."""
        try:
            # A loop that runs while nothing happens: it makes no span (nor does its Redis client).
            with suppress_instrumentation():
                while self.subscribers:
                    self.hand_out(await self.store.listen(self.position, READ_COUNT, READ_WAIT_SECONDS))
        except Exception as exc:
            # Redis failing is expected now and then (logged without a traceback); anything else is not.
            logger.log(
                logging.WARNING if isinstance(exc, RedisError) else logging.ERROR,
                "reading the live events failed (%s: %s): the %d connections here end and resume from their last ids",
                type(exc).__name__,
                exc,
                self._connections(),
                exc_info=not isinstance(exc, RedisError),
            )
            reason = f"reading the live events failed: {type(exc).__name__}"
            self._end_all(lambda: Interrupted(reason))
        finally:
            # No await between the last look at `subscribers` and this: a connection that comes after
            # starts a reader of its own.
            self.reader = None

    def hand_out(self, batch: Sequence[LiveEvent]) -> None:
        for live in batch:
            if live.event.id <= self.position:
                continue
            if live.prev > self.position:
                logger.warning(
                    "the live stream trimmed events after %d before this instance read them: the %d connections "
                    "here end and resume from their last ids",
                    self.position,
                    self._connections(),
                )
                self._end_all(Lagged)
            self.position = live.event.id
            for subscriber in self.subscribers.get(live.event.tenant_id, ()):
                subscriber.offer(live.event)

    def _connections(self) -> int:
        return sum(len(subscribers) for subscribers in self.subscribers.values())

    def _end_all(self, error: Callable[[], Exception]) -> None:
        for subscribers in self.subscribers.values():
            for subscriber in subscribers:
                subscriber.end(error())
        self.subscribers.clear()

    async def close(self) -> None:
        if self.reader is not None:
            await cancel_and_wait(self.reader)
        self._end_all(lambda: Interrupted("the gateway is stopping"))

    async def check_resumable(self, tenant_id: str, after: int) -> None:
        """Raises `Expired` when what came after `after` is no longer all kept (before a stream opens,
        so the client gets a 410 instead of a stream with a hole), and `NeverSent` when `after` is past
        every event the feed has had (a 400 instead of a stream that stays silent)."""
        try:
            # Asked every time: events may have been removed before the relay ever saw them. Every
            # tenant's events from `after` itself on: the feed's events are only ever removed oldest
            # first (`pruned_through`), so `after` is an id the feed has had exactly when one of them
            # is still there or was removed since. The event behind an id a client holds committed
            # before the client could see it, so a page read now has it (or has pruned it): the check
            # cannot race a write.
            page = await self.feed.page(max(after - 1, 0), 1)
        except UpstreamError:
            if after < await self.store.floor(tenant_id):
                raise  # the feed is needed for this resume
            if after > await self.store.head():
                # Past what the live stream has: a made-up id, or the stream behind the feed (a
                # relay catching up, a fresh Redis). Only the feed can tell, so the client is told to
                # come back rather than refused (or given a stream that would stay silent).
                raise
            return  # the stream holds everything after `after`
        if after < page.pruned_through:
            raise Expired(page.pruned_through)
        if after > page.pruned_through and not page.items:
            raise NeverSent(after)

    async def backlog(self, tenant_id: str, after: int) -> AsyncIterator[StreamEvent]:
        """Every event of the tenant after `after` that is stored now, in id order: from the stream,
        and from the orders feed for what the stream has trimmed."""
        cursor = after
        while True:
            floor = await self.store.floor(tenant_id)
            if cursor < floor:
                page = await self.feed.page(cursor, FEED_MAX_LIMIT, tenant_id)
                if cursor < page.pruned_through:
                    # Removed since the stream opened: end it; the client's reconnect gets the 410.
                    raise Expired(page.pruned_through)
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
        Raises `Overflowed` when the reader fell more than its buffer behind (`Lagged`: the instance's
        reader did), `Interrupted` when the live stream failed, `Expired` when events after `after`
        are no longer kept."""
        subscriber = await self.subscribe(tenant_id)
        try:
            last = subscriber.start if after is None else after
            if after is not None:
                async for event in self.backlog(tenant_id, after):
                    if subscriber.error is not None:
                        # Ended while the backlog was read: the client resumes from what it got.
                        raise subscriber.error
                    yield event
                    last = event.id
            while True:
                event = await subscriber.next()
                if event.id > last:
                    yield event
                    last = event.id
        finally:
            self.unsubscribe(tenant_id, subscriber)
