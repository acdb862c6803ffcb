"""The recovery task: finishes what requests could not, so no stock stays held for nothing.

- attempts still pending after `attempt_timeout_seconds` (their request died after reserving, e.g. a
  crash) and attempts whose compensation failed: release their stock, then drop them;
- cancelled orders whose stock is not yet released (the inventory service was unreachable): release;
- stored orders whose reservation is not yet confirmed: confirm;
- finished attempts older than the idempotency TTL: forget their key;
- events older than `events_retention_seconds` (when set): remove them from the outbox.

Each step is idempotent at the inventory service and claimed with conditional updates here, so
several orders processes can run the task side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from opentelemetry.instrumentation.utils import suppress_instrumentation

from services.orders import upstream
from services.orders.models import OPEN_RESERVATION, OrderState, ReservationState
from services.orders.service import OrdersContext, release_cancelled, service_identity
from shared.db import utcnow
from shared.errors import PorticoError

logger = logging.getLogger("portico.orders.recovery")
BATCH = 100
# Events removed per round at most: a backlog is worked off over several rounds, never in one long
# transaction that would hold the feed.
PRUNE_BATCH = 5_000


async def recover_once(ctx: OrdersContext) -> None:
    settings = ctx.settings
    now = utcnow()
    settled = now - timedelta(seconds=settings.recovery_grace_seconds)
    async with ctx.transaction() as repo:
        await repo.abandon_stale_attempts(now - timedelta(seconds=settings.attempt_timeout_seconds))
    async with ctx.transaction() as repo:
        abandoned = await repo.abandoned_attempts(settled, BATCH)
        to_release = [
            order
            for held in OPEN_RESERVATION
            for order in await repo.orders_to_reconcile(OrderState.CANCELLED, held, settled, BATCH)
        ]
        to_confirm = await repo.orders_to_reconcile(OrderState.CONFIRMED, ReservationState.RESERVED, settled, BATCH)

    for attempt in abandoned:
        try:
            await upstream.release_order(ctx.inventory, service_identity(attempt.tenant_id), attempt.id)
        except PorticoError as exc:
            logger.warning("releasing the stock of abandoned attempt %s failed: %s", attempt.id, exc)
            continue
        async with ctx.transaction() as repo:
            await repo.delete_attempt(attempt.id)
        logger.info("released the stock of abandoned order attempt %s", attempt.id)

    for order in to_release:
        await release_cancelled(ctx, service_identity(order.tenant_id), order)

    for order in to_confirm:
        try:
            confirmed = await upstream.confirm(ctx.inventory, service_identity(order.tenant_id), order.reservation_id)
        except PorticoError as exc:
            logger.warning("confirming reservation %s failed: %s", order.reservation_id, exc)
            continue
        if not confirmed:
            logger.error("reservation %s of stored order %s was released", order.reservation_id, order.id)
            continue
        async with ctx.transaction() as repo:
            await repo.set_reservation_status(order.id, (ReservationState.RESERVED,), ReservationState.CONFIRMED)

    async with ctx.transaction() as repo:
        await repo.purge_done_attempts(now - timedelta(seconds=settings.idempotency_ttl_seconds))
    if settings.events_retention_seconds:
        async with ctx.transaction() as repo:
            removed = await repo.prune_events(now - timedelta(seconds=settings.events_retention_seconds), PRUNE_BATCH)
        if removed:
            logger.info("removed %d events past the retention", removed)


async def _loop(ctx: OrdersContext) -> None:
    while True:
        try:
            # A clean-up, not a request: it makes no span (nor does what it calls: its calls say so).
            with suppress_instrumentation():
                await recover_once(ctx)
        except Exception:
            # A database or network hiccup must not end the task: the next round tries again.
            logger.exception("order recovery round failed")
        await asyncio.sleep(ctx.settings.recovery_interval_seconds)


@contextlib.asynccontextmanager
async def running(ctx: OrdersContext) -> AsyncIterator[None]:
    """Runs the recovery task for the life of the app, and lets compensations in flight finish."""
    task = asyncio.create_task(_loop(ctx)) if ctx.settings.recovery_enabled else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if ctx.background:
            await asyncio.wait(list(ctx.background), timeout=10)
