"""Usage: every answer to a tenant metered, and the monthly quota's threshold events.

Metering. Every answer the gateway gives a tenant (an authenticated caller with a tenant: the edge's
own answers, a 429 included, and every route's) is counted once, by tenant, route template, status
class and hour (UTC): one Redis hash per tenant and hour, `<prefix>usage:{t:<tenant>}:<YYYYMMDDHH>`,
field `<class> <route template>`, kept `GATEWAY_USAGE_RETENTION_DAYS`. The class is `2xx` for every
answer under 400 (a 304 or a redirect is a success too), `4xx` and `5xx`. A request that matched no
route is counted under the route `unmatched`.

An answer is counted in the process as it is sent (its `http.response.start`), which costs the request
a dictionary increment and no Redis call; every `GATEWAY_USAGE_FLUSH_SECONDS` (0.1 s) what was counted
is written to Redis as one pipeline, one HINCRBY per tenant, hour, route and class. Awaiting a Redis
write per answer instead cost about 75 µs of CPU per request, 13% of the whole pipeline
(`docs/benchmarks/gateway.md`). So:

- none is counted twice: each count is written once (a write that failed is kept in the process and
  added to the next one; a write whose answer was lost is not repeated);
- a process that stops (SIGTERM, a redeploy) writes what it counted before it exits: nothing is lost;
- the bound: a process killed outright (SIGKILL, the machine lost) loses the answers it counted since
  its last write, at most `GATEWAY_USAGE_FLUSH_SECONDS` of its answers (plus the time that write takes).
  While Redis fails, the counts wait in the process (and are lost if it is killed before Redis
  answers again).

Embedded (no Redis), the counts are kept in this process, at once.

The monthly quota (requests per calendar month, UTC) is counted in the rate limit's own script
(`gateway/edge/ratelimit.py`, CALENDAR): one round trip, exact across gateway instances. Its 80% and
100% thresholds are decided in that script, once per period, by the request that reaches them; the
event `quota.threshold_reached` is then added to the orders service's feed (`POST /events`), the same
feed as the order events, so it reaches `/v1/events`, `/v1/ws` and webhooks like any of them. The event's
id is derived from (tenant, period, threshold) and the feed adds an id only once, so a publication that
is repeated (a retry, a second gateway instance, a process that died before it marked the event
published) adds nothing: each threshold's event is in the feed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any, Protocol

from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from gateway.edge.metrics import TOP_TENANTS, EdgeMetrics
from gateway.edge.periods import HOUR_SECONDS, hour_label, rfc3339
from gateway.edge.ratelimit import (
    TENANT_SUBJECT_PREFIX,
    MemoryRateLimitStore,
    MonthlyQuotas,
    Policy,
    RedisRateLimitStore,
    tenant_subject,
)
from gateway.edge.store import RedisClient, StoreCaller, StoreUnavailable
from shared.context import RequestContext
from shared.contract import EVENTS_WRITE, Identity, service_subject
from shared.errors import PorticoError
from shared.events import FEED_PATH, QUOTA_THRESHOLD_REACHED
from shared.http import ServiceClient
from shared.metrics import samples_directory

logger = logging.getLogger("portico.gateway.usage")

STATUS_CLASSES = ("2xx", "4xx", "5xx")
# How often the top tenants' gauge is set.
EXPORT_SECONDS = 5.0
UNMATCHED = "unmatched"


def status_class(status: int) -> str:
    return "2xx" if status < 400 else "4xx" if status < 500 else "5xx"


class UsageStore(Protocol):
    async def add_many(self, counts: Counter[tuple[str, int, str]]) -> None:
        """Adds `counts`: (tenant, the hour's start in Unix s, field) -> answers."""

    async def hours(self, tenant_id: str, hours: Sequence[int]) -> list[dict[str, int]]:
        """The counts of each of `hours`, by field."""


class RedisUsageStore:
    def __init__(self, redis: RedisClient, prefix: str, retention_seconds: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = retention_seconds

    def key(self, tenant_id: str, hour: int) -> str:
        return f"{self.prefix}usage:{{{tenant_subject(tenant_id)}}}:{hour_label(hour)}"

    async def add_many(self, counts: Counter[tuple[str, int, str]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for (tenant_id, hour, field), n in counts.items():
            key = self.key(tenant_id, hour)
            pipe.hincrby(key, field, n)
            pipe.expire(key, self.ttl, nx=True)
        await pipe.execute()

    async def hours(self, tenant_id: str, hours: Sequence[int]) -> list[dict[str, int]]:
        pipe = self.redis.pipeline(transaction=False)
        for hour in hours:
            pipe.hgetall(self.key(tenant_id, hour))
        answers = await pipe.execute()
        return [{_text(k): int(v) for k, v in answer.items()} for answer in answers]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class MemoryUsageStore:
    """The counts in this process, for a single gateway without Redis; hours past the retention are
    dropped as each new hour starts."""

    def __init__(self, retention_seconds: int) -> None:
        self.retention = retention_seconds
        self._hours: dict[tuple[str, int], Counter[str]] = {}
        self._latest = 0

    async def add_many(self, counts: Counter[tuple[str, int, str]]) -> None:
        for (tenant_id, hour, field), n in counts.items():
            self.add(tenant_id, hour, field, n)

    def add(self, tenant_id: str, hour: int, field: str, n: int = 1) -> None:
        if hour > self._latest:
            self._latest = hour
            oldest = hour - self.retention
            for key in [k for k in self._hours if k[1] < oldest]:
                del self._hours[key]
        counts = self._hours.get((tenant_id, hour))
        if counts is None:
            counts = self._hours[(tenant_id, hour)] = Counter()
        counts[field] += n

    async def hours(self, tenant_id: str, hours: Sequence[int]) -> list[dict[str, int]]:
        return [dict(self._hours.get((tenant_id, hour), ())) for hour in hours]


@dataclass(eq=False, slots=True)
class Metering:
    """Counts each answer to a tenant (`count`, in the process, before the answer is sent) and writes
    the counts to the store in batches (`flush_loop`: every `flush_seconds`, and once more when the
    process stops).

    While Redis fails, the counts stay in the process and the next write is tried `retry_seconds`
    later; the first write that succeeds adds them all."""

    store: UsageStore
    call: StoreCaller
    metrics: EdgeMetrics
    _: KW_ONLY
    flush_seconds: float = 0.1
    retry_seconds: float = 1.0
    # Counted and not written yet: (tenant, hour, field) -> answers. An in-process store is written at once.
    pending: Counter[tuple[str, int, str]] = dataclasses.field(init=False, default_factory=Counter)
    memory: MemoryUsageStore | None = dataclasses.field(init=False)
    # This process's answers per tenant in `self._hour`, for the top tenants' gauge, and the tenants
    # the gauge shows now.
    _hour: int = dataclasses.field(init=False, default=0)
    _by_tenant: Counter[str] = dataclasses.field(init=False, default_factory=Counter)
    _exported: set[str] = dataclasses.field(init=False, default_factory=set)
    # Several workers (`shared/serving/`): a gauge's label set, once written to the worker's sample
    # file, stays there until the worker exits (prometheus_client cannot remove one).
    _kept_labels: bool = dataclasses.field(init=False, default_factory=lambda: samples_directory() is not None)

    def __post_init__(self) -> None:
        self.memory = self.store if isinstance(self.store, MemoryUsageStore) else None

    def count(self, context: RequestContext, status: int) -> None:
        identity = context.principal
        if identity is None or identity.tenant_id is None:
            return
        tenant_id = identity.tenant_id
        hour = int(time.time()) // HOUR_SECONDS * HOUR_SECONDS
        if hour != self._hour:
            self._hour, self._by_tenant = hour, Counter()
        self._by_tenant[tenant_id] += 1
        field = f"{status_class(status)} {context.route or UNMATCHED}"
        if self.memory is not None:
            self.memory.add(tenant_id, hour, field)
        else:
            self.pending[(tenant_id, hour, field)] += 1

    async def flush(self) -> bool:
        """Writes what was counted since the last write; False when the store failed (the counts are
        kept for the next one)."""
        if not self.pending:
            return True
        batch, self.pending = self.pending, Counter()
        try:
            await self.call(self.store.add_many(batch))
        except StoreUnavailable:
            self.pending.update(batch)
            return False
        return True

    async def flush_loop(self, stop: asyncio.Event) -> None:
        """Writes the counts every `flush_seconds` until `stop` (the lifespan's end, once the server has
        answered its last request), and once more then."""
        written = True
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.flush_seconds if written else self.retry_seconds)
            written = await self.flush()

    def export_top_tenants(self) -> None:
        """Sets the gauge of the tenants with most answers this hour, and drops the others' (with
        several workers, sets them to 0, which is not served: their label sets cannot be removed)."""
        gauge = self.metrics.top_tenants
        if int(time.time()) // HOUR_SECONDS * HOUR_SECONDS != self._hour:
            self._by_tenant = Counter()
        top = dict(self._by_tenant.most_common(TOP_TENANTS))
        for tenant_id in self._exported - top.keys():
            if self._kept_labels:
                gauge.labels(tenant_id).set(0)
            else:
                gauge.remove(tenant_id)
        for tenant_id, n in top.items():
            gauge.labels(tenant_id).set(n)
        self._exported = set(top)

    async def export_loop(self, stop: asyncio.Event) -> None:
        """Exports the top tenants every `EXPORT_SECONDS` until `stop` (the lifespan's end)."""
        while not stop.is_set():
            self.export_top_tenants()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), EXPORT_SECONDS)


# --------------------------------------------------------------------------- quota thresholds

PUBLISHER = Identity(subject=service_subject("gateway"), scopes=frozenset({EVENTS_WRITE}))
EVENT_NAMESPACE = uuid.UUID("6f3c2a5e-8d1b-4f7a-9c0e-5b2d7e4a1f90")
THRESHOLDS = ((80, 1), (100, 2))


def threshold_event_id(tenant_id: str, period: str, threshold: int) -> str:
    """The one id of a threshold's event: the same from every gateway, every time."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"quota:{tenant_id}:{period}:{threshold}"))


class ThresholdMarks(Protocol):
    async def used(self, subject: str, policy: Policy) -> int:
        """The requests counted in `policy`'s period so far."""

    async def threshold_count(self, subject: str, policy: Policy, threshold: int) -> int | None:
        """The count that reached `threshold` of `policy` (None: not reached)."""

    async def mark_published(self, subject: str, policy: Policy, threshold: int) -> None:
        """The threshold's event is in the feed: the counting script stops reporting it."""


class RedisThresholdMarks:
    def __init__(self, redis: RedisClient, counts: RedisRateLimitStore) -> None:
        self.redis = redis
        self.counts = counts

    async def used(self, subject: str, policy: Policy) -> int:
        value = await self.redis.hget(self.counts.key(subject, policy), "c")
        return int(value) if value is not None else 0

    async def threshold_count(self, subject: str, policy: Policy, threshold: int) -> int | None:
        value = await self.redis.hget(self.counts.key(subject, policy), f"e{threshold}")
        return int(value) if value is not None else None

    async def mark_published(self, subject: str, policy: Policy, threshold: int) -> None:
        await self.redis.hset(self.counts.key(subject, policy), f"s{threshold}", 1)


class MemoryThresholdMarks:
    def __init__(self, counts: MemoryRateLimitStore) -> None:
        self.counts = counts

    async def used(self, subject: str, policy: Policy) -> int:
        return int(self.counts.period_state(subject, policy)[0])

    async def threshold_count(self, subject: str, policy: Policy, threshold: int) -> int | None:
        state = self.counts.period_state(subject, policy)
        value = state[1 if threshold == 80 else 3]
        return int(value) if value else None

    async def mark_published(self, subject: str, policy: Policy, threshold: int) -> None:
        self.counts.period_state(subject, policy)[2 if threshold == 80 else 4] = 1


class QuotaAnnouncer:
    """Publishes the events of quota thresholds the counting script reports as pending.

    One task at a time per tenant and period in this process publishes what is pending, 80% before
    100% (and a threshold reported meanwhile after those), so a tenant's events are in the feed in
    that order: a second gateway that publishes the same events waits, at the feed's unique id, for
    the first one's 80% before it adds its 100%. A publication that failed is tried again by a request
    at least `retry_seconds` later (the script reports the threshold until it is marked published)."""

    MAX_REMEMBERED = 10_000

    def __init__(self, marks: ThresholdMarks, orders: ServiceClient, *, retry_seconds: float = 5.0) -> None:
        self.marks = marks
        self.orders = orders
        self.retry_seconds = retry_seconds
        # (subject, policy key) -> thresholds reported pending and not yet taken by its task
        self._wanted: dict[tuple[str, str], int] = {}
        self._quiet: dict[tuple[str, str], float] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    def pending(self, subject: str, policy: Policy, flags: int) -> None:
        key = (subject, policy.key)
        running = self._tasks.get(key)
        if running is not None and not running.done():
            # Taken by the running task before it ends (it reads `_wanted` again after each pass).
            self._wanted[key] = self._wanted.get(key, 0) | flags
            return
        now = time.monotonic()
        if self._quiet.get(key, 0.0) > now:
            return
        if len(self._quiet) >= self.MAX_REMEMBERED:
            self._quiet = {k: v for k, v in self._quiet.items() if v > now}
        self._wanted[key] = flags
        task = asyncio.create_task(self._publish_pending(subject, policy, key))
        self._tasks[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))

    def _forget(self, key: tuple[str, str], done: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is done:
            del self._tasks[key]

    async def _publish_pending(self, subject: str, policy: Policy, key: tuple[str, str]) -> None:
        while flags := self._wanted.pop(key, 0):
            for threshold, bit in THRESHOLDS:
                if flags & bit and not await self.publish(subject, policy, threshold):
                    self._wanted.pop(key, None)
                    self._quiet[key] = time.monotonic() + self.retry_seconds
                    return

    async def publish(self, subject: str, policy: Policy, threshold: int) -> bool:
        """Adds the threshold's event to the feed and marks it published; False when it could not."""
        tenant_id = subject.removeprefix(TENANT_SUBJECT_PREFIX)
        try:
            used = await self.marks.threshold_count(subject, policy, threshold)
            if used is None:
                return False
            event: dict[str, Any] = {
                "id": threshold_event_id(tenant_id, policy.period, threshold),
                "type": QUOTA_THRESHOLD_REACHED,
                "tenant_id": tenant_id,
                "data": {
                    "threshold": threshold,
                    "period_start": f"{policy.period}-01T00:00:00Z",
                    "limit": policy.quota.limit,
                    "used": used,
                },
            }
            response = await self.orders.send("POST", FEED_PATH, identity=PUBLISHER, json=event)
            if response.status_code != 202:
                logger.warning(
                    "the orders service answered %s to a quota event; it is published again later",
                    response.status_code,
                )
                return False
            await self.marks.mark_published(subject, policy, threshold)
        except (RedisError, OSError, TimeoutError, PorticoError) as exc:
            # The script reports the threshold again: a later request publishes it.
            logger.warning(
                "publishing a quota event failed (%s: %s); it is published again later", type(exc).__name__, exc
            )
            return False
        return True

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)


# --------------------------------------------------------------------------- reading


# The current month's quota of a tenant, as `GET /v1/usage` and the dashboard answer it.
class QuotaUse(BaseModel):
    period_start: str
    period_end: str
    limit: int | None = Field(description="Requests this calendar month (UTC); null: no limit.")
    used: int


class UsageReader:
    """What `GET /v1/usage` and the dashboard read: a tenant's counts by hour, and its monthly quota."""

    def __init__(self, store: UsageStore, marks: ThresholdMarks, monthly: MonthlyQuotas) -> None:
        self.store = store
        self.marks = marks
        self.monthly = monthly

    async def hours(self, tenant_id: str, hours: Sequence[int]) -> list[dict[str, int]]:
        return await self.store.hours(tenant_id, hours)

    async def quota(self, identity: Identity) -> QuotaUse:
        """The tenant's quota of the current month, and how much of it is used."""
        assert identity.tenant_id is not None
        policy = self.monthly.policy(identity)
        month = self.monthly.policies.month
        return QuotaUse(
            period_start=rfc3339(month.start),
            period_end=rfc3339(month.end),
            limit=None if policy.unlimited else policy.quota.limit,
            used=await self.marks.used(tenant_subject(identity.tenant_id), policy),
        )
