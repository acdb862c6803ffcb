"""All SQL of deliveries: what the API reads, replays and recovers, and what the delivery worker
claims, records and deletes when its retention is over.

Repositories never commit: the API's session commits per request, and the worker opens one
transaction per step (claim, record, release, each batch of the retention) itself.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Integer,
    String,
    and_,
    case,
    column,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    update,
    values,
)

from services.webhooks.models import ACTIVE, DISABLED, Delivery, DeliveryAttempt, Endpoint, Event
from services.webhooks.repository import DELIVERIES, delivery_row, wants
from services.webhooks.schedule import Decision
from services.webhooks.schemas import ENDPOINT_DISABLED
from services.webhooks.sender import AttemptResult, host_key
from shared.db import UTCDateTime, new_id, rows_changed, utcnow
from shared.repository import Repository

PENDING = "pending"
FAILED = "failed"
CANCELLED = "cancelled"
# How many rows a claim looks at for each slot it may fill: room to skip endpoints that are full.
SCAN_FACTOR = 4
# A claim orders at most this many tenants with due work (those whose deliveries waited longest).
TENANT_SCAN = 1000
# A rate-limited endpoint's next attempt may be claimed this long before its turn; the worker that
# claims it waits for the turn, so attempts start evenly spaced whatever the poll interval.
RATE_HORIZON_SECONDS = 1.0
# The attempt log shows at most this many attempts (the latest), however often a delivery is replayed.
ATTEMPT_LOG_LIMIT = 100
# Why an endpoint was disabled, as its `endpoint.disabled` event says.
GONE = "gone"
FAILING = "failing"


def _not_leased(now: datetime) -> Any:
    return or_(Delivery.lease_expires_at.is_(None), Delivery.lease_expires_at <= now)


def _due(now: datetime) -> Any:
    return and_(Delivery.status == PENDING, Delivery.next_attempt_at <= now, _not_leased(now))


def _in_flight(now: datetime) -> Any:
    return and_(Delivery.status == PENDING, Delivery.lease_expires_at > now)


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

    async def requeue_failed(self, endpoint_id: str, since: datetime, now: datetime) -> int:
        """Replays (as `replay` does) every failed delivery of the endpoint made at or after `since`."""
        result = await self.session.execute(
            update(Delivery)
            .where(Delivery.endpoint_id == endpoint_id, Delivery.status == FAILED, Delivery.created_at >= since)
            .values(status=PENDING, next_attempt_at=now, round_attempts=0, replays=Delivery.replays + 1)
        )
        return rows_changed(result)

    async def cancel_pending(self, endpoint_id: str) -> int:
        """Ends every pending delivery of an endpoint that was disabled; in-flight attempts lose their lease."""
        result = await self.session.execute(
            update(Delivery)
            .where(Delivery.endpoint_id == endpoint_id, Delivery.status == PENDING)
            .values(status=CANCELLED, next_attempt_at=None, lease_token=None, lease_expires_at=None)
        )
        return rows_changed(result)


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
    # The receiver host (`host:port`) the attempt connects to: connections are bounded per tenant and host.
    host: str = ""
    # Its turn under the endpoint's rate limit, when that is still ahead: the attempt waits for it.
    not_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class Load:
    """What the claiming worker has in flight, by tenant and by tenant and receiver host, and when it
    last got deliveries of each tenant (a claim's sequence number: tenants served longest ago go first)."""

    tenants: Mapping[str, int] = field(default_factory=dict)
    hosts: Mapping[tuple[str, str], int] = field(default_factory=dict)
    served: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HeldBack:
    """What a claim left due deliveries of only because it was at a bound: one of its attempts
    ending frees a slot those could take at once."""

    endpoints: frozenset[str] = frozenset()
    tenants: frozenset[str] = frozenset()
    hosts: frozenset[tuple[str, str]] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.endpoints or self.tenants or self.hosts)

    def freed_by(self, claimed: Claimed) -> bool:
        return (
            claimed.endpoint_id in self.endpoints
            or claimed.tenant_id in self.tenants
            or (claimed.tenant_id, claimed.host) in self.hosts
        )


@dataclass(frozen=True, slots=True)
class ClaimResult:
    claimed: list[Claimed]
    cancelled: int  # deliveries found pending for an endpoint that was disabled
    held_back: HeldBack = HeldBack()
    # When the next delivery of a rate-limited endpoint may be claimed (None: none waits for its turn).
    next_turn_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    due: int
    oldest_due_at: datetime | None


@dataclass(frozen=True, slots=True)
class FailureRule:
    """An endpoint whose attempts have all failed for `seconds`, at least `attempts` in a row, is
    disabled; `attempts` 0 turns the rule off."""

    seconds: float
    attempts: int

    def trips(self, failures: int, failing_since: datetime | None, now: datetime) -> bool:
        if self.attempts <= 0 or failures < self.attempts or failing_since is None:
            return False
        return (now - failing_since).total_seconds() >= self.seconds


NEVER_DISABLE = FailureRule(seconds=0, attempts=0)


@dataclass(frozen=True, slots=True)
class Recorded:
    # Whether the worker still held the delivery (its outcome was written).
    held: bool
    # Why the endpoint was disabled by this attempt ("gone", "failing"), if it was.
    disabled: str | None = None


@dataclass(frozen=True, slots=True)
class _Due:
    id: str
    endpoint_id: str
    tenant_id: str
    next_attempt_at: datetime


@dataclass(slots=True)
class _Target:
    """An endpoint as a claim holds it: locked, with its attempts in flight and its rate clock."""

    status: str
    host: str
    rate_limit: int | None
    next_turn: datetime | None
    busy: int = 0
    moved: bool = False


@dataclass(slots=True)
class _Picks:
    picked: dict[str, datetime | None] = field(default_factory=dict)  # delivery id -> its turn
    orphaned: list[str] = field(default_factory=list)
    endpoints: set[str] = field(default_factory=set)
    tenants: set[str] = field(default_factory=set)
    hosts: set[tuple[str, str]] = field(default_factory=set)
    next_turn_at: datetime | None = None

    def held_back(self) -> HeldBack:
        return HeldBack(frozenset(self.endpoints), frozenset(self.tenants), frozenset(self.hosts))


def _shares(
    tenants: Sequence[str], limit: int, tenant_limit: int, load: Load
) -> tuple[dict[str, tuple[int, int]], set[str]]:
    """Which tenants this claim serves, each with (how many it may get, how many rows to look at),
    and the tenants left out because this worker has their share in flight already.

    Tenants the worker served longest ago come first, then those whose deliveries have waited
    longest (`tenants` is in that order), at most one per slot.
    """
    saturated: set[str] = set()
    room: dict[str, int] = {}
    for tenant in tenants:
        left = tenant_limit - load.tenants.get(tenant, 0)
        if left <= 0:
            saturated.add(tenant)
        else:
            room[tenant] = left
    rank = {tenant: i for i, tenant in enumerate(tenants)}
    chosen = sorted(room, key=lambda tenant: (load.served.get(tenant, 0), rank[tenant]))[:limit]
    if not chosen:
        return {}, saturated
    fair = math.ceil(limit / len(chosen))
    return {t: (min(room[t], limit), SCAN_FACTOR * min(room[t], fair)) for t in chosen}, saturated


def _pick(
    due: Mapping[str, Sequence[_Due]],
    targets: Mapping[str, _Target],
    *,
    limit: int,
    endpoint_limit: int,
    host_limit: int,
    shares: Mapping[str, tuple[int, int]],
    load: Load,
    now: datetime,
) -> _Picks:
    """Round robin over the tenants: each in turn gets its next delivery that fits every bound, until
    the slots are filled or nothing fits."""
    picks = _Picks()
    queues = {tenant: deque(rows) for tenant, rows in due.items() if rows}
    got = dict.fromkeys(queues, 0)
    hosts = dict(load.hosts)
    horizon = now + timedelta(seconds=RATE_HORIZON_SECONDS)
    while queues and len(picks.picked) < limit:
        for tenant in list(queues):
            if len(picks.picked) >= limit:
                break
            queue = queues[tenant]
            while queue:
                row = queue.popleft()
                target = targets.get(row.endpoint_id)
                if target is None:
                    continue  # another worker holds the endpoint now; next time
                if target.status != ACTIVE:
                    picks.orphaned.append(row.id)
                    continue
                if target.busy >= endpoint_limit:
                    picks.endpoints.add(row.endpoint_id)
                    continue
                host = (tenant, target.host)
                if hosts.get(host, 0) >= host_limit:
                    picks.hosts.add(host)
                    continue
                turn: datetime | None = None
                if target.rate_limit is not None:
                    turn = max(now, target.next_turn or now)
                    if turn > horizon:
                        ready = turn - timedelta(seconds=RATE_HORIZON_SECONDS)
                        picks.next_turn_at = min(picks.next_turn_at or ready, ready)
                        continue
                    target.next_turn = turn + timedelta(seconds=1 / target.rate_limit)
                    target.moved = True
                picks.picked[row.id] = turn if turn is not None and turn > now else None
                target.busy += 1
                hosts[host] = hosts.get(host, 0) + 1
                got[tenant] += 1
                break
            if got[tenant] >= shares[tenant][0]:
                if queue:
                    picks.tenants.add(tenant)
                del queues[tenant]
            elif not queue:
                del queues[tenant]
    return picks


class WorkerRepository(DeliveryRepository):
    """The delivery worker's queries, in the caller's transaction."""

    async def claim(
        self,
        *,
        limit: int,
        endpoint_limit: int,
        lease_seconds: float,
        token: str,
        now: datetime,
        tenant_limit: int | None = None,
        host_limit: int | None = None,
        load: Load | None = None,
    ) -> ClaimResult:
        """Leases up to `limit` due deliveries to `token`, fairly across tenants, within every bound.

        Bounds: at most `endpoint_limit` attempts in flight per endpoint across all workers, and, in
        this worker (`load` is what it has in flight), at most `tenant_limit` per tenant and
        `host_limit` per tenant and receiver host; an endpoint's rate limit spaces its attempts.
        Fairness: the slots go round robin to the tenants with due work, those served longest ago
        first, so one tenant's backlog or slow receivers never hold back another tenant's delivery.

        On PostgreSQL the due rows and their endpoints are locked with SKIP LOCKED, so concurrent
        claims by other workers pass over them instead of waiting or taking the same ones; holding
        the endpoint row while counting its leases keeps the per-endpoint bound and the rate limit
        exact across workers. SQLite ignores the locks: it has one writer at a time and runs one
        worker.

        The result names what stayed behind only because of a bound (endpoints, tenants, hosts), so
        the worker can claim again as soon as one of their attempts ends, and when the next turn of a
        rate-limited endpoint comes.
        """
        load = load or Load()
        full = await self._full_endpoints(now, endpoint_limit)
        tenants = await self._tenants_with_due_work(now, full)
        shares, saturated = _shares(tenants, limit, tenant_limit or limit, load)
        held_endpoints = await self._with_due_work(full, now)
        due = await self._lock_due({tenant: rows for tenant, (_, rows) in shares.items()}, full, now)
        targets = await self._lock_endpoints({row.endpoint_id for rows in due.values() for row in rows})
        await self._count_in_flight(targets, now)
        picks = _pick(
            due,
            targets,
            limit=limit,
            endpoint_limit=endpoint_limit,
            host_limit=host_limit or limit,
            shares=shares,
            load=load,
            now=now,
        )
        picks.endpoints |= held_endpoints
        picks.tenants |= saturated
        cancelled = await self._cancel_orphaned(picks.orphaned)
        await self._advance_rate_clocks(targets)
        leased = await self._lease(picks.picked, token, lease_seconds, now)
        claimed = await self._load_claimed(leased, picks.picked, token, now)
        return ClaimResult(claimed, cancelled, picks.held_back(), picks.next_turn_at)

    # The steps of a claim, in its one transaction.

    async def _full_endpoints(self, now: datetime, endpoint_limit: int) -> list[str]:
        """Endpoints with `endpoint_limit` attempts in flight already, across all workers."""
        return list(
            await self.session.scalars(
                select(Delivery.endpoint_id)
                .where(_in_flight(now))
                .group_by(Delivery.endpoint_id)
                .having(func.count() >= endpoint_limit)
            )
        )

    async def _with_due_work(self, endpoint_ids: list[str], now: datetime) -> set[str]:
        """Those of the endpoints that have due deliveries."""
        if not endpoint_ids:
            return set()
        return set(
            await self.session.scalars(
                select(Delivery.endpoint_id).where(_due(now), Delivery.endpoint_id.in_(endpoint_ids)).distinct()
            )
        )

    async def _tenants_with_due_work(self, now: datetime, full: list[str]) -> list[str]:
        """Tenants with due deliveries to endpoints that are not full, longest waiting first."""
        oldest = func.min(Delivery.next_attempt_at)
        rows = await self.session.execute(
            select(Delivery.tenant_id)
            .where(_due(now), Delivery.endpoint_id.not_in(full))
            .group_by(Delivery.tenant_id)
            .order_by(oldest, Delivery.tenant_id)
            .limit(TENANT_SCAN)
        )
        return [row.tenant_id for row in rows]

    async def _lock_due(self, wanted: Mapping[str, int], full: list[str], now: datetime) -> dict[str, list[_Due]]:
        """Up to `wanted[tenant]` due deliveries of each tenant, earliest first, locked (SKIP LOCKED)."""
        if not wanted:
            return {}
        columns = (Delivery.id, Delivery.endpoint_id, Delivery.tenant_id, Delivery.next_attempt_at)
        found: list[Any] = []
        if self.session.get_bind().dialect.name == "postgresql":
            # One statement: each tenant's rows through a LATERAL subquery that locks as it reads, so
            # rows another claim holds are passed over and the next ones taken instead.
            tenants = values(column("tenant_id", String), column("wanted", Integer), name="wanted").data(
                list(wanted.items())
            )
            each = (
                select(*columns)
                .where(Delivery.tenant_id == tenants.c.tenant_id, _due(now), Delivery.endpoint_id.not_in(full))
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(tenants.c.wanted)
                .with_for_update(skip_locked=True, of=Delivery)
                .lateral("due")
            )
            found = list(await self.session.execute(select(each).select_from(tenants).join(each, true())))
        else:
            # SQLite has no LATERAL (nor row locks): a statement per tenant.
            for tenant, count in wanted.items():
                found += await self.session.execute(
                    select(*columns)
                    .where(Delivery.tenant_id == tenant, _due(now), Delivery.endpoint_id.not_in(full))
                    .order_by(Delivery.next_attempt_at, Delivery.id)
                    .limit(count)
                )
        due: dict[str, list[_Due]] = {tenant: [] for tenant in wanted}
        for row in sorted(found, key=lambda r: (r.next_attempt_at, r.id)):
            due[row.tenant_id].append(_Due(row.id, row.endpoint_id, row.tenant_id, row.next_attempt_at))
        return due

    async def _lock_endpoints(self, endpoint_ids: Iterable[str]) -> dict[str, _Target]:
        """The endpoints that no other claim holds, locked until this claim commits."""
        ids = sorted(endpoint_ids)
        if not ids:
            return {}
        rows = await self.session.execute(
            select(Endpoint.id, Endpoint.status, Endpoint.url, Endpoint.rate_limit_per_second, Endpoint.rate_next_at)
            .where(Endpoint.id.in_(ids))
            .order_by(Endpoint.id)
            # NO KEY UPDATE: the relay's inserts (which only share-lock the key) go on.
            .with_for_update(skip_locked=True, key_share=True)
        )
        return {
            row.id: _Target(row.status, host_key(row.url), row.rate_limit_per_second, row.rate_next_at) for row in rows
        }

    async def _count_in_flight(self, targets: Mapping[str, _Target], now: datetime) -> None:
        """Each endpoint's attempts in flight, across all workers."""
        if not targets:
            return
        rows = await self.session.execute(
            select(Delivery.endpoint_id, func.count())
            .where(_in_flight(now), Delivery.endpoint_id.in_(list(targets)))
            .group_by(Delivery.endpoint_id)
        )
        for endpoint_id, count in rows:
            targets[endpoint_id].busy = int(count)

    async def _cancel_orphaned(self, delivery_ids: list[str]) -> int:
        """Ends deliveries left pending by a race with their endpoint being disabled: nothing is sent."""
        if not delivery_ids:
            return 0
        result = await self.session.execute(
            update(Delivery)
            .where(Delivery.id.in_(delivery_ids), Delivery.status == PENDING)
            .values(status=CANCELLED, next_attempt_at=None)
        )
        return rows_changed(result)

    async def _advance_rate_clocks(self, targets: Mapping[str, _Target]) -> None:
        """Stores where each rate-limited endpoint's next turn now stands (its row is locked)."""
        for endpoint_id, target in targets.items():
            if target.moved:
                await self.session.execute(
                    update(Endpoint).where(Endpoint.id == endpoint_id).values(rate_next_at=target.next_turn)
                )

    async def _lease(
        self, picked: Mapping[str, datetime | None], token: str, lease_seconds: float, now: datetime
    ) -> list[str]:
        """Writes the lease of each picked delivery; an attempt waiting for its turn gets that wait on top."""
        if not picked:
            return []
        wait = max(((turn - now).total_seconds() for turn in picked.values() if turn is not None), default=0.0)
        return list(
            await self.session.scalars(
                update(Delivery)
                # The conditions again: on SQLite nothing above was locked.
                .where(Delivery.id.in_(list(picked)), _due(now))
                .values(lease_token=token, lease_expires_at=now + timedelta(seconds=lease_seconds + wait))
                .returning(Delivery.id)
            )
        )

    async def _load_claimed(
        self, leased: list[str], picked: Mapping[str, datetime | None], token: str, now: datetime
    ) -> list[Claimed]:
        """What each leased delivery's attempt needs: its endpoint and its event."""
        if not leased:
            return []
        rows = await self.session.execute(
            select(Delivery, Endpoint, Event)
            .join(Endpoint, Endpoint.id == Delivery.endpoint_id)
            .join(Event, Event.id == Delivery.event_id)
            .where(Delivery.id.in_(leased))
            .order_by(Delivery.next_attempt_at, Delivery.id)
        )
        return [
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
                host=host_key(endpoint.url),
                not_before=picked.get(delivery.id),
            )
            for delivery, endpoint, event in rows
        ]

    # Recording an attempt

    async def record(
        self,
        claimed: Claimed,
        result: AttemptResult,
        decision: Decision,
        now: datetime,
        rule: FailureRule = NEVER_DISABLE,
        traceparent: str | None = None,
    ) -> Recorded:
        """Writes an attempt's outcome; answers whether the worker still held the delivery, and why
        the attempt disabled the endpoint if it did.

        The attempt is logged either way (it happened), and counts for the endpoint's failure rule.
        Its outcome changes the delivery only under the worker's own lease: a delivery cancelled,
        deleted or (after a lease lapsed) taken by another worker meanwhile is left to whoever has it
        now. A replay during the attempt keeps its fresh schedule; only a 410 overrides it.

        The endpoint row is written first, as the API locks it when disabling: one lock order, no
        deadlock. An endpoint this attempt disables tells the tenant's other endpoints
        (`endpoint.disabled`, continuing `traceparent`).
        """
        disabled = await self._judge_endpoint(claimed, result, decision, rule, now)
        held = await self._write_outcome(claimed, result, decision)
        if disabled is not None:
            await self.cancel_pending(claimed.endpoint_id)
            await self._publish_endpoint_disabled(claimed, disabled, now, traceparent)
        if held or await self.session.scalar(select(Delivery.id).where(Delivery.id == claimed.delivery_id)):
            await self.session.execute(
                insert(DeliveryAttempt).values(
                    delivery_id=claimed.delivery_id,
                    at=result.at,
                    status_code=result.status_code,
                    duration_ms=result.duration_ms,
                    error=result.error,
                    next_attempt_at=decision.next_attempt_at,
                )
            )
        return Recorded(held, disabled)

    async def _judge_endpoint(
        self, claimed: Claimed, result: AttemptResult, decision: Decision, rule: FailureRule, now: datetime
    ) -> str | None:
        """Keeps the endpoint's failure record; disables it on a 410 or by the failure rule, and says
        why when this attempt did."""
        endpoint = Endpoint.id == claimed.endpoint_id
        if result.ok:
            # A clean record stays untouched (and unlocked): only the first success after failures writes.
            await self.session.execute(
                update(Endpoint)
                .where(endpoint, Endpoint.consecutive_failures > 0)
                .values(consecutive_failures=0, failing_since=None)
            )
            return None
        if decision.status == CANCELLED:
            return GONE if await self._disable(claimed.endpoint_id, now) else None
        record = (
            await self.session.execute(
                update(Endpoint)
                .where(endpoint, Endpoint.status == ACTIVE)
                .values(
                    consecutive_failures=Endpoint.consecutive_failures + 1,
                    failing_since=func.coalesce(Endpoint.failing_since, literal(result.at, UTCDateTime())),
                )
                .returning(Endpoint.consecutive_failures, Endpoint.failing_since)
            )
        ).one_or_none()
        if record is not None and rule.trips(record.consecutive_failures, record.failing_since, now):
            return FAILING if await self._disable(claimed.endpoint_id, now) else None
        return None

    async def _disable(self, endpoint_id: str, now: datetime) -> bool:
        """Disables an active endpoint; False when it was not active (any more)."""
        done = await self.session.execute(
            update(Endpoint)
            .where(Endpoint.id == endpoint_id, Endpoint.status == ACTIVE)
            .values(status=DISABLED, updated_at=now)
            .returning(Endpoint.id)
        )
        return done.first() is not None

    async def _write_outcome(self, claimed: Claimed, result: AttemptResult, decision: Decision) -> bool:
        """The delivery's new state, under the worker's lease; whether the lease was still its own."""
        same_round = Delivery.replays == claimed.replays
        written = await self.session.scalars(
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
        return written.first() is not None

    async def _publish_endpoint_disabled(
        self, claimed: Claimed, reason: str, now: datetime, traceparent: str | None
    ) -> None:
        """The `endpoint.disabled` event, owed to the tenant's other active endpoints that subscribe to it."""
        event_id = new_id()
        await self.session.execute(
            insert(Event).values(
                id=event_id,
                seq=0,
                tenant_id=claimed.tenant_id,
                type=ENDPOINT_DISABLED,
                data={"endpoint_id": claimed.endpoint_id, "reason": reason},
                occurred_at=now,
                received_at=now,
                traceparent=traceparent,
            )
        )
        others = await self.session.scalars(
            select(Endpoint)
            .where(Endpoint.tenant_id == claimed.tenant_id, Endpoint.status == ACTIVE)
            .where(Endpoint.id != claimed.endpoint_id)
            .order_by(Endpoint.id)
        )
        rows = [
            delivery_row(event_id, claimed.tenant_id, ENDPOINT_DISABLED, endpoint.id, now)
            for endpoint in others
            if wants(endpoint, ENDPOINT_DISABLED, now)
        ]
        if rows:
            await self.session.execute(insert(DELIVERIES), rows)

    async def release(self, token: str, delivery_ids: Sequence[str]) -> int:
        """Gives deliveries back before their lease runs out (a worker stopping)."""
        if not delivery_ids:
            return 0
        result = await self.session.execute(
            update(Delivery)
            .where(Delivery.id.in_(list(delivery_ids)), Delivery.lease_token == token)
            .values(lease_token=None, lease_expires_at=None)
        )
        return rows_changed(result)

    async def queue_stats(self, now: datetime) -> QueueStats:
        """Deliveries due and waiting for a worker, and since when the oldest of them is due."""
        query = select(func.count(), func.min(Delivery.next_attempt_at)).where(_due(now))
        row = (await self.session.execute(query)).one()
        oldest = row[1]
        if isinstance(oldest, str):  # SQLite answers an aggregate of a typed column as text
            oldest = datetime.fromisoformat(oldest).replace(tzinfo=now.tzinfo)
        return QueueStats(int(row[0]), oldest)

    # Retention

    async def delete_expired_deliveries(self, cutoff: datetime, batch: int) -> int:
        """Deletes up to `batch` finished deliveries made before `cutoff`, oldest first, with their
        attempt logs (ON DELETE CASCADE). Pending ones stay, however old: they are still owed."""
        expired = and_(Delivery.status != PENDING, Delivery.created_at < cutoff)
        oldest = (
            select(Delivery.id)
            .where(expired)
            .order_by(Delivery.created_at)
            .limit(batch)
            # Rows a replay is changing right now are passed over, not waited for.
            .with_for_update(skip_locked=True)
        )
        ids = list(await self.session.scalars(oldest))
        if not ids:
            return 0
        # The conditions again: a replay may have made one pending since (and on SQLite nothing was locked).
        result = await self.session.execute(delete(Delivery).where(Delivery.id.in_(ids), expired))
        return rows_changed(result)

    async def delete_expired_events(self, cutoff: datetime, batch: int) -> int:
        """Deletes up to `batch` events received before `cutoff` that no delivery refers to any more."""
        unused = and_(
            Event.received_at < cutoff,
            ~exists().where(Delivery.event_id == Event.id),
        )
        ids = list(
            await self.session.scalars(
                select(Event.id)
                .where(unused)
                .order_by(Event.received_at)
                .limit(batch)
                .with_for_update(skip_locked=True)
            )
        )
        if not ids:
            return 0
        result = await self.session.execute(delete(Event).where(Event.id.in_(ids), unused))
        return rows_changed(result)


def signing_secrets(endpoint: Endpoint, now: datetime | None = None) -> tuple[str, ...]:
    """The current secret, and the previous one while its grace period lasts."""
    now = now or utcnow()
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > now:
        return (endpoint.secret, endpoint.previous_secret)
    return (endpoint.secret,)
