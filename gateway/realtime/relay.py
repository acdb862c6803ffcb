"""The real-time relay: copies the orders feed into the per-tenant event streams and the live stream.

Like the webhooks relay it pulls (`GET /events` on the orders service, in seq order, never skipping
an event that commits late). With Redis, one gateway instance at a time relays: it holds a lease
(a redis-py lock, renewed every poll) and keeps the feed position in Redis, so whichever instance
takes over goes on where the last one stopped. Adding an event twice adds nothing (its stream id is
its own), so a relay that lost its lease mid-batch, or crashed between adding events and moving the
position, does no harm. Embedded, the process relays for itself and starts from the feed's start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import KW_ONLY, InitVar, dataclass, field

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import Link, Tracer
from pydantic import ValidationError
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

from gateway.edge.store import RedisClient
from gateway.realtime.streams import EventStore, StreamEvent
from shared.contract import EVENTS_READ, Identity, service_subject
from shared.errors import UpstreamBadResponse, UpstreamError
from shared.events import FEED_PATH, FeedEvent, FeedPage
from shared.http import ServiceClient
from shared.loops import running_loop
from shared.request_id import request_id_headers
from shared.telemetry import context_of

logger = logging.getLogger("portico.gateway.realtime")

FEED_IDENTITY = Identity(subject=service_subject("gateway"), scopes=frozenset({EVENTS_READ}))


class FeedError(UpstreamBadResponse):
    """The orders service answered, but not with a page of its event feed (a 502 to a client)."""


@dataclass(frozen=True, slots=True)
class OrdersFeed:
    """Reads the orders service's event feed as the gateway."""

    orders: ServiceClient

    async def page(self, after: int, limit: int, tenant_id: str | None = None) -> FeedPage:
        params: dict[str, str | int] = {"after": after, "limit": limit}
        if tenant_id is not None:
            params["tenant_id"] = tenant_id
        # In a request (a resume's check, its backlog) its id goes along; the relay's own polls have none.
        response = await self.orders.send(
            "GET", FEED_PATH, identity=FEED_IDENTITY, params=params, headers=request_id_headers()
        )
        if response.status_code != 200:
            raise FeedError("orders", f"The orders feed answered {response.status_code}: {response.text[:300]}")
        try:
            return FeedPage.model_validate_json(response.content)
        except ValidationError as exc:
            raise FeedError(
                "orders", f"The orders feed answered a page that does not fit its contract: {exc}"
            ) from None


class Position:
    """Where the relay is in the feed: in Redis (shared by the instances), or in this process."""

    def __init__(self, redis: RedisClient | None, key: str) -> None:
        self.redis = redis
        self.key = key
        self.value = 0

    async def get(self) -> int:
        if self.redis is not None:
            raw = await self.redis.get(self.key)
            self.value = int(raw) if raw is not None else 0
        return self.value

    async def set(self, value: int) -> None:
        if self.redis is not None:
            # Never backwards: a relay that lost its lease may finish a batch behind the new one.
            await self.redis.eval(_MOVE_FORWARD, 1, self.key, value)
        self.value = max(self.value, value)


_MOVE_FORWARD = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


@dataclass(eq=False, slots=True)
class EventRelay:
    feed: OrdersFeed
    store: EventStore
    _: KW_ONLY
    redis: InitVar[RedisClient | None]
    prefix: InitVar[str]
    interval: float
    batch_size: int
    lease_seconds: InitVar[float]
    max_backoff: float = 10.0
    tracer: Tracer | None = None
    position: Position = field(init=False)
    lease: Lock | None = field(init=False, default=None)

    def __post_init__(self, redis: RedisClient | None, prefix: str, lease_seconds: float) -> None:
        # `{relay}`: the lease and the position share a hash tag, one Cluster node.
        self.position = Position(redis, f"{prefix}events:{{relay}}:position")
        if redis is not None:
            self.lease = Lock(redis, f"{prefix}events:{{relay}}:lease", timeout=lease_seconds, thread_local=False)

    async def _hold_lease(self) -> bool:
        """True while this instance holds the relay's lease (taking it when free, renewing it when held)."""
        if self.lease is None:
            return True
        if self.lease.local.token is not None:
            try:
                await self.lease.reacquire()
                return True
            except LockError:
                self.lease.local.token = None
                logger.info("real-time relay lease lost to another gateway instance")
        if await self.lease.acquire(blocking=False):
            logger.info("this gateway instance relays order events now")
            return True
        return False

    async def run_once(self) -> int:
        """Relays one batch after the stored position; answers how many events it read (0: none new,
        or another instance relays)."""
        # A poll is no trace of its own (nor are its Redis calls); a batch that carries events is one
        # span, linked to the traces that wrote them.
        with suppress_instrumentation():
            if not await self._hold_lease():
                return 0
            after = await self.position.get()
            page = await self.feed.page(after, self.batch_size)
            with self._batch_span(page.items, after) if page.items else contextlib.nullcontext():
                await self.store.append([StreamEvent.from_feed(event) for event in page.items])
                if page.next_after > after:
                    await self.position.set(page.next_after)
        return len(page.items)

    def _batch_span(self, events: Sequence[FeedEvent], after: int) -> AbstractContextManager[object]:
        if self.tracer is None:
            return contextlib.nullcontext()
        links: dict[int, Link] = {}
        for event in events:
            context = context_of(event.traceparent)
            if context is not None:
                span_context = trace.get_current_span(context).get_span_context()
                # One link per trace; the SDK keeps at most its link limit (128 by default) of them.
                links.setdefault(span_context.trace_id, Link(span_context))
        return self.tracer.start_as_current_span(
            "events.relay",
            # A new trace of the relay's own, not a child of whatever started the loop.
            context=Context(),
            links=list(links.values()),
            attributes={
                "messaging.batch.message_count": len(events),
                "portico.events.after": after,
                "portico.events.last": events[-1].seq,
            },
        )

    async def run(self, stop: asyncio.Event) -> None:
        # Everything the loop does, its lease's release at the end included, is no span of its own.
        with suppress_instrumentation():
            await self._run(stop)

    async def _run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                read = await self.run_once()
            except (UpstreamError, RedisError) as exc:
                failures += 1
                delay = min(self.max_backoff, self.interval * 2.0 ** min(failures, 20)) * random.uniform(0.5, 1.0)
                logger.warning("real-time relay: %s; retrying in %.1fs (failure %d)", exc, delay, failures)
            else:
                if failures:
                    logger.info("real-time relay recovered after %d failures", failures)
                failures = 0
                delay = 0.0 if read >= self.batch_size else self.interval
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        if self.lease is not None and self.lease.local.token is not None:
            with contextlib.suppress(LockError, RedisError):
                await self.lease.release()


@contextlib.asynccontextmanager
async def running(relay: EventRelay) -> AsyncIterator[EventRelay]:
    """The relay's loop for the life of the gateway."""
    async with running_loop(relay.run, name="realtime-relay", stop_timeout=5.0, logger=logger):
        yield relay
