"""The delivery worker: claims due deliveries, makes their attempts, records what happened.

At least once: a delivery is leased before its attempt and its outcome is recorded after, each in a
transaction of its own. A worker that dies anywhere in between leaves a lease that lapses after
`delivery_lease_seconds`, and the delivery is attempted again (by any worker) with the same
`webhook-id`, so a receiver that deduplicates on it sees each event once. No delivery is attempted
by two workers at once: a lease outlives the longest attempt (the settings refuse anything else),
and claims skip leased rows.

Concurrency and fairness: each worker runs up to `worker_concurrency` attempts at once, and every
worker together at most `endpoint_concurrency` to one endpoint, so a slow receiver holds a few slots,
never all. Within a worker, one tenant has at most `tenant_concurrency` attempts in flight and at
most `tenant_host_concurrency` connections to one receiver host, and each claim hands the free slots
round robin to the tenants with due work (those it served longest ago first): a tenant whose
receivers hang, or whose backlog is huge, never delays another tenant's delivery. An endpoint's
`rate_limit_per_second` spaces its attempts across all workers. When a claim leaves due deliveries
behind because of one of those bounds, the worker claims again as soon as one of its own attempts
that held the bound ends (or the rate limit's next turn comes), not at the next poll: otherwise one
busy endpoint would get at most `endpoint_concurrency` attempts per poll interval, however fast it
answers.

Retention: every worker deletes finished deliveries (and their attempt logs) older than
`delivery_retention_days` every `retention_interval_seconds`, a batch per short transaction, so the
clean-up never holds locks a claim or a record waits on for long.

Stopping: no new claims; attempts in flight get `worker_stop_grace_seconds` to finish and be
recorded; what is still running then is cancelled and its leases are given back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import uuid
from collections import Counter as Tally
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.webhooks.delivery_repository import (
    Claimed,
    FailureRule,
    HeldBack,
    Load,
    Recorded,
    WorkerRepository,
)
from services.webhooks.models import webhook_id_of
from services.webhooks.schedule import Decision, decide
from services.webhooks.sender import AttemptResult, Sender, create_session
from services.webhooks.settings import WebhooksSettings
from services.webhooks.signing import webhook_headers
from services.webhooks.url_safety import Resolver
from shared.db import utcnow
from shared.repository import transaction
from shared.state import ServiceState
from shared.telemetry import TENANT_ID, context_of, current_traceparent

logger = logging.getLogger("portico.webhooks.worker")

# Recording an outcome is tried this often before the lease is left to lapse (the attempt is then
# made again: at least once).
RECORD_TRIES = 3
# How long a stopping worker waits for outcomes being written when the grace period is over.
RECORD_GRACE_SECONDS = 5.0
STATS_INTERVAL_SECONDS = 5.0
MAX_IDLE_BACKOFF_SECONDS = 10.0
DEFAULT_FAILURE_RULE = FailureRule(seconds=5 * 24 * 3600, attempts=10)
# The worker remembers when it last served this many tenants at most (the oldest are forgotten first).
SERVED_MEMORY = 10_000


class WorkerMetrics:
    """The worker's metrics, in its own registry (served on its `/metrics`)."""

    OUTCOMES = ("succeeded", "failed_attempt", "dead_lettered", "cancelled", "released", "lease_lost")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.deliveries = Counter(
            "portico_webhook_deliveries_total",
            "Delivery attempts by what came of them.",
            ("outcome",),
            registry=registry,
        )
        for outcome in self.OUTCOMES:
            self.deliveries.labels(outcome)
        self.attempt_duration = Histogram(
            "portico_webhook_attempt_duration_seconds",
            "Time of one delivery attempt, from resolving the host to the receiver's answer.",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0),
        )
        self.queue_depth = Gauge(
            "portico_webhook_queue_depth", "Deliveries due and waiting for a worker.", registry=registry
        )
        self.oldest_pending_age = Gauge(
            "portico_webhook_oldest_pending_age_seconds",
            "How long the longest-waiting due delivery has been due (0 when none waits).",
            registry=registry,
        )
        self.deleted = Counter(
            "portico_webhook_retention_deleted_total",
            "Rows the retention deleted: finished deliveries (with their attempt logs) and events.",
            ("kind",),
            registry=registry,
        )
        for kind in ("deliveries", "events"):
            self.deleted.labels(kind)


def envelope(claimed: Claimed) -> bytes:
    """The body every attempt of a delivery sends: the same bytes each time."""
    timestamp = claimed.occurred_at.isoformat().replace("+00:00", "Z")
    return json.dumps(
        {"type": claimed.event_type, "timestamp": timestamp, "data": claimed.event_data},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


@dataclass
class _InFlight:
    claimed: Claimed
    task: asyncio.Task[None]
    # Once the outcome is being written, the attempt is never cancelled: it is as good as done.
    recording: bool = False


@dataclass
class WorkerConfig:
    concurrency: int = 32
    endpoint_concurrency: int = 4
    lease_seconds: float = 60.0
    poll_interval: float = 0.5
    stop_grace: float = 10.0
    schedule: Sequence[float] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    worker_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    tenant_concurrency: int = 8
    tenant_host_concurrency: int = 4
    failure_rule: FailureRule = DEFAULT_FAILURE_RULE
    retention_days: float = 30.0
    retention_interval: float = 3600.0
    retention_batch: int = 1000


@dataclass(eq=False, slots=True)
class DeliveryWorker:
    sessionmaker: async_sessionmaker[AsyncSession]
    sender: Sender
    config: WorkerConfig
    metrics: WorkerMetrics
    tracer: Tracer = field(default_factory=lambda: trace.get_tracer("portico.webhooks.worker"))
    rng: random.Random = field(default_factory=random.Random)
    in_flight: dict[str, _InFlight] = field(init=False, default_factory=dict)
    _slot_freed: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    # What the last claim left due deliveries of because of a bound (endpoints, tenants, hosts),
    # the attempts that ended since that claim began, and the wake-up for one of those ending.
    _held_back: HeldBack = field(init=False, default_factory=HeldBack)
    _ended: list[Claimed] = field(init=False, default_factory=list)
    _bound_freed: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    # When a rate-limited endpoint's next delivery may be claimed.
    _next_turn_at: datetime | None = field(init=False, default=None)
    # Claims made, and the claim each tenant last got deliveries in (least recently served first).
    claims: int = field(init=False, default=0)
    _served: dict[str, int] = field(init=False, default_factory=dict)
    running: bool = field(init=False, default=False)

    # The loop

    async def run(self, stop: asyncio.Event) -> None:
        """Claims and attempts until `stop` is set, then finishes or gives back what it holds."""
        self.running = True
        stats = asyncio.create_task(self._stats_loop(stop), name="webhooks-worker-stats")
        retention = asyncio.create_task(self._retention_loop(stop), name="webhooks-worker-retention")
        failures = 0
        try:
            while not stop.is_set():
                free = self.config.concurrency - len(self.in_flight)
                claimed = 0
                # Slots are filled in batches: a claim per finished attempt would cost a claim each.
                if free >= self.batch or not self.in_flight:
                    try:
                        claimed = await self.claim_and_start(free)
                    except Exception as exc:  # the loop outlives any failure; it backs off instead
                        failures += 1
                        delay = min(MAX_IDLE_BACKOFF_SECONDS, self.config.poll_interval * 2**failures)
                        if isinstance(exc, SQLAlchemyError | OSError):
                            logger.warning("claiming deliveries failed (%s); retrying in %.1fs", exc, delay)
                        else:
                            logger.exception("claiming deliveries failed; retrying in %.1fs", delay)
                        await self._wait(stop, delay)
                        continue
                    failures = 0
                if claimed and self.config.concurrency - len(self.in_flight) >= self.batch:
                    continue  # maybe more is due: look again at once
                await self._wait(stop, self.config.poll_interval)
        finally:
            await self._drain()
            for task in (stats, retention):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self.running = False

    @property
    def batch(self) -> int:
        return max(1, self.config.concurrency // 4)

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        """Until stop, enough free slots for a claim when too few are free; when enough are free, a
        bound the last claim left due deliveries behind at freed, or a rate limit's next turn; or
        the timeout."""
        self._slot_freed.clear()
        waiters = [asyncio.ensure_future(stop.wait())]
        if self.config.concurrency - len(self.in_flight) < self.batch:
            waiters.append(asyncio.ensure_future(self._slot_freed.wait()))
        else:
            if self._held_back:
                waiters.append(asyncio.ensure_future(self._bound_freed.wait()))
            if self._next_turn_at is not None:
                seconds = max(0.0, min(seconds, (self._next_turn_at - utcnow()).total_seconds()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def load(self) -> Load:
        """What this worker has in flight by tenant and by tenant and host, for the bounds of a claim."""
        tenants: Tally[str] = Tally()
        hosts: Tally[tuple[str, str]] = Tally()
        for entry in self.in_flight.values():
            tenants[entry.claimed.tenant_id] += 1
            hosts[entry.claimed.tenant_id, entry.claimed.host] += 1
        return Load(tenants, hosts, self._served)

    async def claim_and_start(self, free: int) -> int:
        token = f"{self.config.worker_id}:{uuid.uuid4().hex}"
        # Attempts that end while the claim runs may have freed what it saw full: noted from here.
        self._ended.clear()
        self._bound_freed.clear()
        # A poll is no trace of its own; each attempt is.
        with suppress_instrumentation():
            async with transaction(self.sessionmaker, WorkerRepository) as repo:
                result = await repo.claim(
                    limit=free,
                    endpoint_limit=self.config.endpoint_concurrency,
                    lease_seconds=self.config.lease_seconds,
                    token=token,
                    now=utcnow(),
                    tenant_limit=min(self.config.tenant_concurrency, self.config.concurrency),
                    host_limit=self.config.tenant_host_concurrency,
                    load=self.load(),
                )
        self.claims += 1
        self._held_back = result.held_back
        self._next_turn_at = result.next_turn_at
        if any(self._held_back.freed_by(claimed) for claimed in self._ended):
            self._bound_freed.set()
        else:
            self._bound_freed.clear()
        if result.cancelled:
            self.metrics.deliveries.labels("cancelled").inc(result.cancelled)
        for claimed in result.claimed:
            self._served[claimed.tenant_id] = self.claims
            task = asyncio.create_task(self._guarded(claimed), name=f"webhook-attempt-{claimed.delivery_id}")
            self.in_flight[claimed.delivery_id] = _InFlight(claimed, task)
            task.add_done_callback(functools.partial(self._done, claimed.delivery_id))
        if len(self._served) > SERVED_MEMORY:
            # Forgetting a tenant puts it first next time, which is where a tenant not served lately belongs.
            for tenant, _ in sorted(self._served.items(), key=lambda item: item[1])[: SERVED_MEMORY // 2]:
                del self._served[tenant]
        return len(result.claimed)

    def _done(self, delivery_id: str, _: object) -> None:
        entry = self.in_flight.pop(delivery_id, None)
        if entry is not None:
            self._ended.append(entry.claimed)
            if self._held_back.freed_by(entry.claimed):
                self._bound_freed.set()
        if self.config.concurrency - len(self.in_flight) >= self.batch:
            self._slot_freed.set()

    # One attempt

    async def _guarded(self, claimed: Claimed) -> None:
        try:
            await self.attempt(claimed)
        except Exception:
            # Its lease lapses and the delivery is attempted again.
            logger.exception("attempt at delivery %s failed unexpectedly", claimed.delivery_id)

    async def attempt(self, claimed: Claimed) -> None:
        if claimed.not_before is not None:
            # The endpoint's rate limit gave this attempt a turn a little ahead: it starts then.
            await asyncio.sleep(max(0.0, (claimed.not_before - utcnow()).total_seconds()))
        webhook_id = webhook_id_of(claimed.delivery_id)
        attributes: dict[str, Any] = {
            "webhook.id": webhook_id,
            "webhook.delivery_id": claimed.delivery_id,
            "webhook.endpoint_id": claimed.endpoint_id,
            "webhook.event_id": claimed.event_id,
            "webhook.event_type": claimed.event_type,
            "webhook.attempt": claimed.attempts + 1,
            TENANT_ID: claimed.tenant_id,
            "http.request.method": "POST",
            "url.full": claimed.url,
        }
        # Each attempt continues the trace of the request that wrote the event (the span is a child
        # of that request's span in the orders service). Only the span: the request to the tenant's
        # receiver carries no trace header of ours.
        with self.tracer.start_as_current_span(
            "webhook attempt", context=context_of(claimed.traceparent), kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            body = envelope(claimed)
            timestamp = int(utcnow().timestamp())
            headers = webhook_headers(claimed.secrets, webhook_id, timestamp, body)
            result = await self.sender.send(claimed.url, headers, body)
            self.metrics.attempt_duration.observe(result.duration)
            if result.status_code is not None:
                span.set_attribute("http.response.status_code", result.status_code)
            if not result.ok:
                span.set_status(Status(StatusCode.ERROR, result.error))
            # The schedule counts from the attempt's end, as the attempt itself measured it.
            ended = result.at + timedelta(seconds=result.duration)
            decision = decide(
                result.status_code,
                result.retry_after,
                claimed.round_attempts + 1,
                self.config.schedule,
                ended,
                self.rng,
            )
            span.set_attribute("webhook.outcome", decision.outcome)
            entry = self.in_flight.get(claimed.delivery_id)
            if entry is not None:
                entry.recording = True
            recorded = await self._record(claimed, result, decision)
        if recorded is None:
            return
        outcome = decision.outcome if recorded.held else "lease_lost"
        self.metrics.deliveries.labels(outcome).inc()
        self._log(claimed, webhook_id, result, decision, recorded)

    async def _record(self, claimed: Claimed, result: AttemptResult, decision: Decision) -> Recorded | None:
        """Records the outcome (retrying briefly); None when it could not be, so the lease will lapse."""
        for attempt in range(1, RECORD_TRIES + 1):
            try:
                return await self._record_once(claimed, result, decision)
            except (SQLAlchemyError, OSError) as exc:
                if attempt == RECORD_TRIES:
                    logger.error(
                        "could not record the attempt at delivery %s (%s); it will be attempted again "
                        "when its lease lapses",
                        claimed.delivery_id,
                        exc,
                    )
                    return None
                await asyncio.sleep(0.2 * 2**attempt)
        return None

    async def _record_once(self, claimed: Claimed, result: AttemptResult, decision: Decision) -> Recorded:
        async with transaction(self.sessionmaker, WorkerRepository) as repo:
            # An `endpoint.disabled` this attempt causes continues the attempt's trace.
            return await repo.record(
                claimed, result, decision, utcnow(), self.config.failure_rule, current_traceparent()
            )

    def _log(
        self, claimed: Claimed, webhook_id: str, result: AttemptResult, decision: Decision, recorded: Recorded
    ) -> None:
        held = recorded.held
        extra = {
            "delivery_id": claimed.delivery_id,
            "webhook_id": webhook_id,
            "endpoint_id": claimed.endpoint_id,
            "status_code": result.status_code,
            "duration_ms": result.duration_ms,
            "outcome": decision.outcome if held else "lease_lost",
        }
        if recorded.disabled == "failing":
            logger.warning(
                "endpoint %s disabled: its attempts have all failed for %.0fs, %d or more in a row; its "
                "pending deliveries are cancelled",
                claimed.endpoint_id,
                self.config.failure_rule.seconds,
                self.config.failure_rule.attempts,
                extra=extra,
            )
        if not held:
            logger.warning(
                "delivery %s changed hands during its attempt (cancelled, deleted or its lease lapsed); "
                "the attempt is logged, its outcome left to the delivery's current state",
                claimed.delivery_id,
                extra=extra,
            )
        elif decision.outcome == "succeeded":
            logger.info("delivered %s to %s", webhook_id, claimed.endpoint_id, extra=extra)
        elif decision.outcome == "cancelled":
            logger.warning(
                "endpoint %s answered 410 Gone: disabled, its pending deliveries cancelled",
                claimed.endpoint_id,
                extra=extra,
            )
        else:
            logger.info(
                "attempt at %s failed (%s); %s",
                webhook_id,
                result.error,
                f"next at {decision.next_attempt_at:%Y-%m-%dT%H:%M:%SZ}"
                if decision.next_attempt_at
                else "no attempt left: failed",
                extra=extra,
            )

    # Stopping

    async def _drain(self) -> None:
        if not self.in_flight:
            return
        pending = [entry.task for entry in self.in_flight.values()]
        logger.info("stopping: waiting up to %.0fs for %d attempts in flight", self.config.stop_grace, len(pending))
        if self.config.stop_grace > 0:
            await asyncio.wait(pending, timeout=self.config.stop_grace)
        sending = [entry for entry in self.in_flight.values() if not entry.recording]
        for entry in sending:
            entry.task.cancel()
        # Attempts being recorded finish (a blocked database is given a bounded while).
        remaining = [entry.task for entry in self.in_flight.values()]
        if remaining:
            await asyncio.wait(remaining, timeout=RECORD_GRACE_SECONDS)
        for entry in list(self.in_flight.values()):
            entry.task.cancel()
        if not sending:
            return
        by_token: dict[str, list[str]] = {}
        for entry in sending:
            by_token.setdefault(entry.claimed.token, []).append(entry.claimed.delivery_id)
        released = 0
        try:
            async with transaction(self.sessionmaker, WorkerRepository) as repo:
                for token, ids in by_token.items():
                    released += await repo.release(token, ids)
        except (SQLAlchemyError, OSError) as exc:
            logger.error("could not give back %d deliveries (%s); their leases will lapse", len(sending), exc)
            return
        self.metrics.deliveries.labels("released").inc(released)
        logger.warning("stopping: gave back %d deliveries whose attempts had not finished", released)

    # Retention

    async def _retention_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.purge(stop)
            except (SQLAlchemyError, OSError) as exc:
                logger.warning("could not delete expired deliveries: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.retention_interval)

    async def purge(self, stop: asyncio.Event | None = None) -> tuple[int, int]:
        """Deletes what the retention period is over for, a batch per transaction; answers how many
        deliveries and events it deleted."""
        cutoff = utcnow() - timedelta(days=self.config.retention_days)
        batch = self.config.retention_batch
        totals = [0, 0]
        for index, step in enumerate(
            (WorkerRepository.delete_expired_deliveries, WorkerRepository.delete_expired_events)
        ):
            while stop is None or not stop.is_set():
                # A clean-up is no trace of its own.
                with suppress_instrumentation():
                    async with transaction(self.sessionmaker, WorkerRepository) as repo:
                        deleted = await step(repo, cutoff, batch)
                totals[index] += deleted
                if deleted < batch:
                    break
                # Between batches, the claims and records waiting on the database go first.
                await asyncio.sleep(0)
        self.metrics.deleted.labels("deliveries").inc(totals[0])
        self.metrics.deleted.labels("events").inc(totals[1])
        if any(totals):
            logger.info(
                "deleted %d deliveries and %d events older than %g days",
                totals[0],
                totals[1],
                self.config.retention_days,
            )
        return totals[0], totals[1]

    # Gauges

    async def _stats_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.update_stats()
            except (SQLAlchemyError, OSError) as exc:
                logger.warning("could not read the queue's size: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATS_INTERVAL_SECONDS)

    async def update_stats(self) -> None:
        now = utcnow()
        with suppress_instrumentation():
            async with transaction(self.sessionmaker, WorkerRepository) as repo:
                stats = await repo.queue_stats(now)
        self.metrics.queue_depth.set(stats.due)
        age = (now - stats.oldest_due_at).total_seconds() if stats.oldest_due_at is not None else 0.0
        self.metrics.oldest_pending_age.set(max(0.0, age))


def worker_config(settings: WebhooksSettings) -> WorkerConfig:
    return WorkerConfig(
        concurrency=settings.worker_concurrency,
        endpoint_concurrency=settings.endpoint_concurrency,
        lease_seconds=settings.delivery_lease_seconds,
        poll_interval=settings.worker_poll_interval_seconds,
        stop_grace=settings.worker_stop_grace_seconds,
        schedule=settings.retry_schedule_seconds,
        tenant_concurrency=settings.tenant_concurrency,
        tenant_host_concurrency=settings.tenant_host_concurrency,
        failure_rule=FailureRule(settings.failing_endpoint_seconds, settings.failing_endpoint_attempts),
        retention_days=settings.delivery_retention_days,
        retention_interval=settings.retention_interval_seconds,
        retention_batch=settings.retention_batch_size,
    )


@contextlib.asynccontextmanager
async def running_delivery_worker(
    state: ServiceState[WebhooksSettings, None], metrics: WorkerMetrics, resolver: Resolver
) -> AsyncIterator[tuple[DeliveryWorker, asyncio.Task[None]]]:
    """The worker and its running loop, for the life of the worker process. On the way out it stops
    claiming, and finishes or gives back what it holds within its grace period."""
    settings = state.settings
    http = create_session(settings.worker_concurrency)
    sender = Sender(
        http,
        timeout=settings.delivery_timeout_seconds,
        allow_private=settings.allow_private_urls,
        dns_timeout=settings.dns_timeout_seconds,
        resolver=resolver,
    )
    worker = DeliveryWorker(
        state.sessionmaker,
        sender,
        worker_config(settings),
        metrics,
        state.tracer_provider.get_tracer("portico.webhooks.worker"),
    )
    stop = asyncio.Event()
    loop = asyncio.create_task(worker.run(stop), name="webhooks-worker")
    try:
        yield worker, loop
    finally:
        stop.set()
        await loop
        await http.close()
