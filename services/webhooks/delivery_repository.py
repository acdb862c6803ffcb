"""All SQL of deliveries: what the API reads and replays, and what the delivery worker claims and records.

Repositories never commit: the API's session commits per request, and the worker opens one
transaction per step (claim, record, release) itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, insert, literal, or_, select, update

from services.webhooks.models import ACTIVE, DISABLED, Delivery, DeliveryAttempt, Endpoint, Event
from services.webhooks.schedule import Decision
from services.webhooks.sender import AttemptResult
from shared.db import UTCDateTime, utcnow
from shared.repository import Repository

PENDING = "pending"
CANCELLED = "cancelled"
# How many rows a claim looks at for each slot it fills: room to skip endpoints that are full.
SCAN_FACTOR = 4
# The attempt log shows at most this many attempts (the latest), however often a delivery is replayed.
ATTEMPT_LOG_LIMIT = 100


def _not_leased(now: datetime) -> Any:
    return or_(Delivery.lease_expires_at.is_(None), Delivery.lease_expires_at <= now)


def _due(now: datetime) -> Any:
    return and_(Delivery.status == PENDING, Delivery.next_attempt_at <= now, _not_leased(now))


class DeliveryRepository(Repository):
    """What the API reads and changes about deliveries (`Repository.one` finds one of a tenant)."""

    async def endpoint_status(self, endpoint_id: str) -> str | None:
        return await self.session.scalar(select(Endpoint.status).where(Endpoint.id == endpoint_id))

    async def attempt_log(self, delivery_id: str) -> Sequence[DeliveryAttempt]:
        """The latest attempts, oldest first."""
        latest = (
            select(DeliveryAttempt)
            .where(DeliveryAttempt.delivery_id == delivery_id)
            .order_by(DeliveryAttempt.at.desc(), DeliveryAttempt.id.desc())
            .limit(ATTEMPT_LOG_LIMIT)
        )
        return list(reversed((await self.session.scalars(latest)).all()))

    async def replay(self, delivery: Delivery, now: datetime) -> None:
        """Due again at once, on a fresh schedule, under the same row (so the same `webhook-id`).

        A lease is left alone: an attempt in flight finishes, and its worker sees the replay count
        move and leaves this schedule as it is.
        """
        await self.session.execute(
            update(Delivery)
            .where(Delivery.id == delivery.id)
            .values(status=PENDING, next_attempt_at=now, round_attempts=0, replays=Delivery.replays + 1)
        )
        await self.session.refresh(delivery)

    async def cancel_pending(self, endpoint_id: str) -> int:
        """Ends every pending delivery of an endpoint that was disabled; in-flight attempts lose their lease."""
        result = await self.session.execute(
            update(Delivery)
            .where(Delivery.endpoint_id == endpoint_id, Delivery.status == PENDING)
            .values(status=CANCELLED, next_attempt_at=None, lease_token=None, lease_expires_at=None)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]  # an UPDATE answers a CursorResult


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery a worker holds, with everything its attempt needs."""

    delivery_id: str
    token: str
    tenant_id: str
    endpoint_id: str
    url: str
    secrets: tuple[str, ...]
    event_id: str
    event_type: str
    event_data: dict[str, Any]
    occurred_at: datetime
    # The trace of the request that wrote the event, which the attempt's span continues.
    traceparent: str | None
    attempts: int
    round_attempts: int
    replays: int


@dataclass(frozen=True, slots=True)
class ClaimResult:
    claimed: list[Claimed]
    cancelled: int  # deliveries found pending for an endpoint that was disabled
    # Endpoints with due deliveries left behind because they were at `endpoint_limit`: one of their
    # attempts finishing frees a slot these could take at once.
    held_back: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class QueueStats:
    due: int
    oldest_due_at: datetime | None


class WorkerRepository(DeliveryRepository):
    """The delivery worker's queries, in the caller's transaction."""

    async def claim(
        self, *, limit: int, endpoint_limit: int, lease_seconds: float, token: str, now: datetime
    ) -> ClaimResult:
        """Leases up to `limit` due deliveries to `token`, at most `endpoint_limit` in flight per endpoint.

        On PostgreSQL the due rows and their endpoints are locked with SKIP LOCKED, so concurrent
        claims by other workers pass over them instead of waiting or taking the same ones; holding
        the endpoint row while counting its leases keeps the per-endpoint bound exact across
        workers. SQLite ignores the locks: it has one writer at a time and runs one worker.

        The result names the endpoints whose due deliveries stayed behind only because the endpoint
        was at its limit, so the worker can claim again as soon as one of their attempts ends.
        """
        in_flight = (Delivery.status == PENDING) & (Delivery.lease_expires_at > now)
        full = list(
            await self.session.scalars(
                select(Delivery.endpoint_id)
                .where(in_flight)
                .group_by(Delivery.endpoint_id)
                .having(func.count() >= endpoint_limit)
            )
        )
        held_back: set[str] = set()
        if full:
            held_back.update(
                await self.session.scalars(
                    select(Delivery.endpoint_id).where(_due(now), Delivery.endpoint_id.in_(full)).distinct()
                )
            )
        candidates = (
            await self.session.execute(
                select(Delivery.id, Delivery.endpoint_id)
                .where(_due(now), Delivery.endpoint_id.not_in(full))
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(limit * SCAN_FACTOR)
                .with_for_update(skip_locked=True, of=Delivery)
            )
        ).all()
        if not candidates:
            return ClaimResult([], 0, frozenset(held_back))
        endpoint_ids = sorted({row.endpoint_id for row in candidates})
        statuses = dict(
            (
                await self.session.execute(
                    select(Endpoint.id, Endpoint.status)
                    .where(Endpoint.id.in_(endpoint_ids))
                    .order_by(Endpoint.id)
                    # NO KEY UPDATE: the relay's inserts (which only share-lock the key) go on.
                    .with_for_update(skip_locked=True, key_share=True)
                )
            ).all()
        )
        busy = dict(
            (
                await self.session.execute(
                    select(Delivery.endpoint_id, func.count())
                    .where(in_flight, Delivery.endpoint_id.in_(list(statuses)))
                    .group_by(Delivery.endpoint_id)
                )
            ).all()
        )
        picked: list[str] = []
        orphaned: list[str] = []
        for row in candidates:
            status = statuses.get(row.endpoint_id)
            if status is None:
                continue  # another worker holds the endpoint now; next time
            if status != ACTIVE:
                orphaned.append(row.id)
            elif busy.get(row.endpoint_id, 0) >= endpoint_limit:
                held_back.add(row.endpoint_id)
            elif len(picked) < limit:
                picked.append(row.id)
                busy[row.endpoint_id] = busy.get(row.endpoint_id, 0) + 1
        cancelled = 0
        if orphaned:
            # Left pending by a race with the endpoint being disabled: nothing is sent to it.
            result = await self.session.execute(
                update(Delivery)
                .where(Delivery.id.in_(orphaned), Delivery.status == PENDING)
                .values(status=CANCELLED, next_attempt_at=None)
            )
            cancelled = int(result.rowcount)  # type: ignore[attr-defined]  # an UPDATE answers a CursorResult
        if not picked:
            return ClaimResult([], cancelled, frozenset(held_back))
        # The conditions again: on SQLite nothing above was locked.
        leased = (
            await self.session.scalars(
                update(Delivery)
                .where(Delivery.id.in_(picked), _due(now))
                .values(lease_token=token, lease_expires_at=now + timedelta(seconds=lease_seconds))
                .returning(Delivery.id)
            )
        ).all()
        if not leased:
            return ClaimResult([], cancelled, frozenset(held_back))
        rows = (
            await self.session.execute(
                select(Delivery, Endpoint, Event)
                .join(Endpoint, Endpoint.id == Delivery.endpoint_id)
                .join(Event, Event.id == Delivery.event_id)
                .where(Delivery.id.in_(leased))
                .order_by(Delivery.next_attempt_at, Delivery.id)
            )
        ).all()
        claimed = [
            Claimed(
                delivery_id=delivery.id,
                token=token,
                tenant_id=delivery.tenant_id,
                endpoint_id=endpoint.id,
                url=endpoint.url,
                secrets=signing_secrets(endpoint, now),
                event_id=event.id,
                event_type=event.type,
                event_data=event.data,
                occurred_at=event.occurred_at,
                traceparent=event.traceparent,
                attempts=delivery.attempts,
                round_attempts=delivery.round_attempts,
                replays=delivery.replays,
            )
            for delivery, endpoint, event in rows
        ]
        return ClaimResult(claimed, cancelled, frozenset(held_back))

    async def record(self, claimed: Claimed, result: AttemptResult, decision: Decision, now: datetime) -> bool:
        """Writes an attempt's outcome; answers whether the worker still held the delivery.

        The attempt is logged either way (it happened). Its outcome changes the delivery only under
        the worker's own lease: a delivery cancelled, deleted or (after a lease lapsed) taken by
        another worker meanwhile is left to whoever has it now. A replay during the attempt keeps
        its fresh schedule; only a 410 overrides it.
        """
        if decision.status == CANCELLED:
            # The endpoint row first, as the API locks it when disabling: one lock order, no deadlock.
            await self.session.execute(
                update(Endpoint)
                .where(Endpoint.id == claimed.endpoint_id, Endpoint.status == ACTIVE)
                .values(status=DISABLED, updated_at=now)
            )
        same_round = Delivery.replays == claimed.replays
        held = (
            await self.session.scalars(
                update(Delivery)
                .where(Delivery.id == claimed.delivery_id, Delivery.lease_token == claimed.token)
                .values(
                    attempts=Delivery.attempts + 1,
                    last_attempt_at=result.at,
                    last_status_code=result.status_code,
                    last_error=result.error,
                    lease_token=None,
                    lease_expires_at=None,
                    status=case((same_round, decision.status), else_=Delivery.status),
                    round_attempts=case((same_round, Delivery.round_attempts + 1), else_=Delivery.round_attempts),
                    next_attempt_at=case(
                        (same_round, literal(decision.next_attempt_at, UTCDateTime())),
                        else_=Delivery.next_attempt_at,
                    ),
                )
                .returning(Delivery.id)
            )
        ).first() is not None
        if held and decision.status == CANCELLED:
            await self.cancel_pending(claimed.endpoint_id)
        if held or await self.session.scalar(select(Delivery.id).where(Delivery.id == claimed.delivery_id)):
            await self.session.execute(
                insert(DeliveryAttempt).values(
                    delivery_id=claimed.delivery_id,
                    at=result.at,
                    status_code=result.status_code,
                    duration_ms=result.duration_ms,
                    error=result.error,
                )
            )
        return held

    async def release(self, token: str, delivery_ids: Sequence[str]) -> int:
        """Gives deliveries back before their lease runs out (a worker stopping)."""
        if not delivery_ids:
            return 0
        result = await self.session.execute(
            update(Delivery)
            .where(Delivery.id.in_(list(delivery_ids)), Delivery.lease_token == token)
            .values(lease_token=None, lease_expires_at=None)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]  # an UPDATE answers a CursorResult

    async def queue_stats(self, now: datetime) -> QueueStats:
        """Deliveries due and waiting for a worker, and since when the oldest of them is due."""
        query = select(func.count(), func.min(Delivery.next_attempt_at)).where(_due(now))
        row = (await self.session.execute(query)).one()
        oldest = row[1]
        if isinstance(oldest, str):  # SQLite answers an aggregate of a typed column as text
            oldest = datetime.fromisoformat(oldest).replace(tzinfo=now.tzinfo)
        return QueueStats(int(row[0]), oldest)


def signing_secrets(endpoint: Endpoint, now: datetime | None = None) -> tuple[str, ...]:
    """The current secret, and the previous one while its grace period lasts."""
    now = now or utcnow()
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > now:
        return (endpoint.secret, endpoint.previous_secret)
    return (endpoint.secret,)
