"""The relay: pulls the orders service's event feed into events and pending deliveries.

Pull, not push: the orders service only keeps its outbox and serves it in order (`GET /events`), and
this service owns how far it has read. One batch is stored in ONE transaction together with the
new cursor, so a crash at any point either stored the whole batch and its cursor or nothing of it;
the next run reads again from the stored cursor, and the unique keys on the event id and on
(event, endpoint) make reading something twice add nothing. At least once in, exactly once stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import KW_ONLY, dataclass

from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import Link, Tracer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.webhooks.repository import RelayRepository, StoredBatch
from services.webhooks.settings import WebhooksSettings
from shared.contract import EVENTS_READ, Identity, service_subject
from shared.errors import UpstreamError
from shared.events import FEED_PATH, FeedEvent, FeedPage
from shared.http import ServiceClient
from shared.loops import running_loop
from shared.repository import transaction
from shared.state import ServiceState
from shared.telemetry import context_of

logger = logging.getLogger("portico.webhooks.relay")

SOURCE = "orders"
RELAY_IDENTITY = Identity(subject=service_subject("webhooks"), scopes=frozenset({EVENTS_READ}))
# How long shutdown waits for the batch in flight before cancelling it (its transaction then rolls
# back, and the batch is read again on the next start).
STOP_TIMEOUT_SECONDS = 5.0
# A batch span links to at most this many of its events' traces (OpenTelemetry's default link limit).
MAX_LINKS = 128


def links_to(events: list[FeedEvent]) -> list[Link]:
    """One link per distinct trace the events were written in (the first MAX_LINKS of them)."""
    links: list[Link] = []
    seen: set[str] = set()
    for event in events:
        traceparent = event.traceparent
        context = context_of(traceparent)
        if traceparent is None or context is None or traceparent in seen:
            continue
        seen.add(traceparent)
        links.append(Link(trace.get_current_span(context).get_span_context()))
        if len(links) == MAX_LINKS:
            break
    return links


class FeedError(RuntimeError):
    """The orders service answered, but not with a page of its event feed."""


@dataclass(eq=False, slots=True)
class OrdersRelay:
    sessionmaker: async_sessionmaker[AsyncSession]
    orders: ServiceClient
    _: KW_ONLY
    batch_size: int = 100
    interval: float = 0.5
    max_backoff: float = 30.0
    tracer: Tracer | None = None

    async def position(self) -> int:
        async with transaction(self.sessionmaker, RelayRepository) as repo:
            return await repo.position(SOURCE)

    async def run_once(self) -> StoredBatch | None:
        """Reads one batch after the stored cursor and stores it; None when the feed had nothing new.

        Raises what went wrong (the orders service unreachable or answering nonsense, the database
        failing); nothing is stored then.
        """
        # A poll is traced only when it carries events: reading the cursor and the feed, and moving
        # the cursor past a page without events, make no span (nor SQL spans) at all.
        with suppress_instrumentation():
            after = await self.position()
            page = await self.fetch(after)
            if not page.items:
                if page.next_after <= after:
                    return None
                async with transaction(self.sessionmaker, RelayRepository) as repo:
                    return await repo.store_batch(SOURCE, page.items, page.next_after)
        with contextlib.ExitStack() as scope:
            if self.tracer is not None:
                # A root span of its own (a batch holds the events of many requests), linked to the
                # trace of each event it carries.
                scope.enter_context(
                    self.tracer.start_as_current_span(
                        "webhooks.relay batch",
                        context=trace.set_span_in_context(trace.INVALID_SPAN),
                        links=links_to(page.items),
                        attributes={"relay.after": after, "relay.events": len(page.items)},
                    )
                )
            async with transaction(self.sessionmaker, RelayRepository) as repo:
                stored = await repo.store_batch(SOURCE, page.items, page.next_after)
        if stored.events or stored.deliveries:
            logger.info(
                "relayed %d new events (%d read) into %d deliveries; cursor %d",
                stored.events,
                len(page.items),
                stored.deliveries,
                stored.position,
                extra={"relay_position": stored.position},
            )
        return stored

    async def fetch(self, after: int) -> FeedPage:
        response = await self.orders.send(
            "GET", FEED_PATH, identity=RELAY_IDENTITY, params={"after": after, "limit": self.batch_size}
        )
        if response.status_code != 200:
            raise FeedError(f"the orders feed answered {response.status_code}: {response.text[:300]}")
        try:
            return FeedPage.model_validate_json(response.content)
        except ValidationError as exc:
            raise FeedError(f"the orders feed answered a page that does not fit its contract: {exc}") from None

    def backoff(self, failures: int) -> float:
        """Exponential with full jitter between half and all of the step, capped."""
        step = min(self.max_backoff, self.interval * 2.0 ** min(failures, 30))
        return step * random.uniform(0.5, 1.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Polls until `stop` is set: at once while batches come full, every interval when idle,
        backing off after failures."""
        failures = 0
        while not stop.is_set():
            try:
                stored = await self.run_once()
            except Exception as exc:
                failures += 1
                delay = self.backoff(failures)
                if isinstance(exc, UpstreamError | FeedError):
                    logger.warning("relay: %s; retrying in %.1fs (failure %d)", exc, delay, failures)
                else:
                    logger.exception("relay batch failed; retrying in %.1fs (failure %d)", delay, failures)
            else:
                if failures:
                    logger.info("relay recovered after %d failures", failures)
                failures = 0
                full = stored is not None and stored.read >= self.batch_size
                delay = 0.0 if full else self.interval
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)


def create_relay(state: ServiceState[WebhooksSettings, None]) -> OrdersRelay:
    settings = state.settings
    return OrdersRelay(
        state.sessionmaker,
        state.service_client("orders", settings.orders_url),
        batch_size=settings.relay_batch_size,
        interval=settings.relay_interval_seconds,
        max_backoff=settings.relay_max_backoff_seconds,
        tracer=state.tracer_provider.get_tracer("portico.webhooks.relay"),
    )


@contextlib.asynccontextmanager
async def running_relay(state: ServiceState[WebhooksSettings, None]) -> AsyncIterator[OrdersRelay]:
    """The relay, its loop running for the life of the service (unless `relay_enabled` is off)."""
    relay = create_relay(state)
    if not state.settings.relay_enabled:
        yield relay
        return
    async with running_loop(relay.run, name="webhooks-relay", stop_timeout=STOP_TIMEOUT_SECONDS, logger=logger):
        yield relay
