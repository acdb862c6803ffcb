"""All SQL of the webhooks service. Every endpoint and delivery query is scoped by tenant."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, func, select

from services.webhooks.models import ACTIVE, Delivery, Endpoint, Event, RelayCursor
from shared.db import dialect_insert, new_id, table_of, utcnow
from shared.events import FeedEvent
from shared.repository import Repository

EVENTS = table_of(Event)
DELIVERIES = table_of(Delivery)
CURSORS = table_of(RelayCursor)


class EndpointRepository(Repository):
    async def count_endpoints(self, tenant_id: str) -> int:
        count = await self.session.scalar(select(func.count()).where(Endpoint.tenant_id == tenant_id))
        return int(count or 0)

    async def delete_endpoint(self, endpoint: Endpoint) -> None:
        # Its deliveries go with it (ON DELETE CASCADE): nothing is owed to a receiver that is gone.
        await self.session.execute(
            delete(Endpoint).where(Endpoint.id == endpoint.id, Endpoint.tenant_id == endpoint.tenant_id)
        )


def wants(endpoint: Endpoint, event_type: str, occurred_at: datetime) -> bool:
    """Whether an event is owed to the endpoint: one of its types, and not from before it was
    registered (an endpoint gets the events that happen after it is, not the backlog)."""
    return event_type in endpoint.events and endpoint.created_at <= occurred_at


def delivery_row(event_id: str, tenant_id: str, event_type: str, endpoint_id: str, now: datetime) -> dict[str, Any]:
    """A new pending delivery of an event to an endpoint, due at once."""
    return {
        "id": new_id(),
        "tenant_id": tenant_id,
        "event_id": event_id,
        "endpoint_id": endpoint_id,
        "event_type": event_type,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


@dataclass(frozen=True, slots=True)
class StoredBatch:
    read: int  # events in the batch
    events: int  # events stored for the first time
    deliveries: int  # deliveries created
    position: int  # the cursor after the batch


class RelayRepository(Repository):
    """What the relay writes: events, their deliveries and its cursor, in the caller's transaction."""

    async def position(self, source: str) -> int:
        value = await self.session.scalar(select(RelayCursor.position).where(RelayCursor.source == source))
        return int(value or 0)

    async def store_batch(self, source: str, events: Sequence[FeedEvent], next_after: int) -> StoredBatch:
        """Stores each event once, one pending delivery per matching endpoint, and moves the cursor.

        Every insert skips what is already there, so reading a batch again (after a crash, or by a
        second replica) adds nothing; the cursor only ever moves forward.
        """
        now = utcnow()
        new_events = 0
        new_deliveries = 0
        if events:
            event_rows: list[dict[str, Any]] = [
                {
                    "id": e.id,
                    "seq": e.seq,
                    "tenant_id": e.tenant_id,
                    "type": e.type,
                    "data": e.data,
                    "occurred_at": e.created_at,
                    "received_at": now,
                    "traceparent": e.traceparent,
                }
                for e in events
            ]
            inserted = await self.session.execute(
                dialect_insert(self.session, EVENTS)
                .on_conflict_do_nothing(index_elements=["id"])
                .returning(EVENTS.c.id),
                event_rows,
            )
            new_events = len(inserted.all())
            delivery_rows = await self._deliveries_for(events, now)
            if delivery_rows:
                created = await self.session.execute(
                    dialect_insert(self.session, DELIVERIES)
                    .on_conflict_do_nothing(index_elements=["event_id", "endpoint_id"])
                    .returning(DELIVERIES.c.id),
                    delivery_rows,
                )
                new_deliveries = len(created.all())
        position = max([next_after, *(e.seq for e in events)])
        await self._advance(source, position, now)
        return StoredBatch(read=len(events), events=new_events, deliveries=new_deliveries, position=position)

    async def _deliveries_for(self, events: Sequence[FeedEvent], now: datetime) -> list[dict[str, Any]]:
        tenants = {e.tenant_id for e in events}
        endpoints = (
            await self.session.scalars(
                select(Endpoint)
                .where(Endpoint.tenant_id.in_(tenants), Endpoint.status == ACTIVE)
                # One order of inserts in every relay, so concurrent ones wait on each other, never deadlock.
                .order_by(Endpoint.id)
            )
        ).all()
        by_tenant: dict[str, list[Endpoint]] = {}
        for endpoint in endpoints:
            by_tenant.setdefault(endpoint.tenant_id, []).append(endpoint)
        rows: list[dict[str, Any]] = []
        for event in events:
            for endpoint in by_tenant.get(event.tenant_id, ()):
                if wants(endpoint, event.type, event.created_at):
                    rows.append(delivery_row(event.id, event.tenant_id, event.type, endpoint.id, now))
        return rows

    async def _advance(self, source: str, position: int, now: datetime) -> None:
        insert = dialect_insert(self.session, CURSORS).values(source=source, position=position, updated_at=now)
        forward = case(
            (insert.excluded.position > CURSORS.c.position, insert.excluded.position), else_=CURSORS.c.position
        )
        await self.session.execute(
            insert.on_conflict_do_update(index_elements=["source"], set_={"position": forward, "updated_at": now})
        )
