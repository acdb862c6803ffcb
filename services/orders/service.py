"""Rules of the orders service: placing an order across three services without ever keeping stock
nobody ordered, cancelling it, and the event feed.

Placing an order takes several transactions with HTTP calls between them, so every function here
owns its transactions (`OrdersContext.transaction`), reads included, rather than running in one
request-wide session: no transaction is ever held open across a call to another service.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import weakref
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.orders import upstream
from services.orders.errors import (
    EventsBusy,
    OrderAlreadyCancelled,
    OrderAttemptExpired,
    OrderNotFound,
    OrdersBusy,
    ReservationRefused,
)
from services.orders.models import (
    OPEN_RESERVATION,
    AttemptState,
    Order,
    OrderAttempt,
    OrderItem,
    OrderState,
    OrderStatusChange,
    OutboxEvent,
    ReservationState,
)
from services.orders.repository import OrderRepository
from services.orders.schemas import CreditOut, EventFeed, EventOut, OrderCreate, OrderOut, ReservationIn
from services.orders.settings import OrdersSettings
from shared.admission import check_deadline, deadline_var, no_deadline
from shared.contract import (
    ORDERS_WRITE,
    CreditLimitExceeded,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    Identity,
    TenantIdentity,
    service_subject,
)
from shared.db import LockNotAvailable, new_id, utcnow
from shared.errors import (
    PorticoError,
    ValidationFailed,
    retry_in,
)
from shared.events import ORDER_CANCELLED, ORDER_CREATED, PublishedEvent
from shared.http import ServiceClient
from shared.pagination import Page, PageQuery
from shared.repository import matching, transaction
from shared.telemetry import current_traceparent

logger = logging.getLogger("portico.orders")


@dataclass
class OrdersContext:
    """What the orders rules need beyond one request's session; built once in the lifespan."""

    settings: OrdersSettings
    sessionmaker: async_sessionmaker[AsyncSession]
    users: ServiceClient
    inventory: ServiceClient
    # Compensations run as tasks of their own, so a request cancelled half-way still finishes them.
    background: set[asyncio.Task[None]] = field(default_factory=set)
    # Orders being placed at once (ORDERS_PLACEMENT_CONCURRENCY); None: not limited.
    placements: asyncio.Semaphore | None = None
    # One lock per user storing an order in this process, so concurrent orders of one user wait for
    # each other here, holding no database connection, rather than inside the database (where each
    # would hold one). Weak: a lock nobody waits for is gone.
    user_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = field(
        default_factory=weakref.WeakValueDictionary
    )

    def user_lock(self, tenant_id: str, user_id: str) -> asyncio.Lock:
        key = (tenant_id, user_id)
        lock = self.user_locks.get(key)
        if lock is None:
            lock = self.user_locks[key] = asyncio.Lock()
        return lock

    def transaction(self) -> AbstractAsyncContextManager[OrderRepository]:
        """The repository in a transaction of its own: committed when the block ends, rolled back
        when it raises."""
        return transaction(self.sessionmaker, OrderRepository)


@dataclass(frozen=True)
class Placed:
    body: str
    replayed: bool


def service_identity(tenant_id: str) -> Identity:
    """Who this service is when it acts on its own (recovery), for one tenant."""
    return Identity(subject=service_subject("orders"), tenant_id=tenant_id, scopes=frozenset({ORDERS_WRITE}))


def order_out(order: Order) -> OrderOut:
    return OrderOut.model_validate(
        {
            "id": order.id,
            "status": order.status,
            "items": [
                {
                    "product_id": item.product_id,
                    "sku": item.sku,
                    "name": item.name,
                    "quantity": item.quantity,
                    "unit_price_cents": item.unit_price_cents,
                    "line_total_cents": item.quantity * item.unit_price_cents,
                }
                for item in order.items
            ],
            "total_cents": order.total_cents,
            "user_id": order.user_id,
            "tenant_id": order.tenant_id,
            "reservation_id": order.reservation_id,
            "status_history": [{"status": change.status, "at": change.created_at} for change in order.history],
            "created_at": order.created_at,
            "updated_at": order.updated_at,
        }
    )


def _refuse_duplicate_products(data: OrderCreate) -> None:
    seen: set[str] = set()
    for index, item in enumerate(data.items):
        if item.product_id in seen:
            field_name = f"items.{index}.product_id"
            raise ValidationFailed(
                "Each product may appear only once in an order; add up its quantities instead.",
                errors=[{"loc": ["body", *field_name.split(".")], "field": field_name, "msg": "duplicate product"}],
            )
        seen.add(item.product_id)


async def _run_to_completion(ctx: OrdersContext, work: Coroutine[Any, Any, None]) -> None:
    """Runs `work` so that cancelling the request does not cancel it."""
    task = asyncio.ensure_future(work)
    ctx.background.add(task)
    task.add_done_callback(ctx.background.discard)
    await asyncio.shield(task)


async def _forget_attempt(ctx: OrdersContext, attempt_id: str) -> None:
    """Drops an attempt that holds no stock, freeing its idempotency key for a retry."""
    try:
        async with ctx.transaction() as repo:
            await repo.delete_attempt(attempt_id)
    except Exception:
        # Left pending, the recovery task abandons and clears it after the attempt timeout.
        logger.exception("could not drop order attempt %s", attempt_id)


async def _compensate(ctx: OrdersContext, identity: Identity, attempt_id: str) -> None:
    """Releases whatever stock the attempt may hold, then drops it. Whatever fails here is retried
    by the recovery task, which finds the attempt abandoned. It undoes work, so the request's
    deadline does not stop it (this runs in a task of its own: its context is its own)."""
    deadline_var.set(None)
    try:
        async with ctx.transaction() as repo:
            await repo.abandon_attempt(attempt_id, utcnow())
        await upstream.release_order(ctx.inventory, identity, attempt_id)
        async with ctx.transaction() as repo:
            await repo.delete_attempt(attempt_id)
    except Exception as exc:
        logger.warning(
            "releasing the stock of order attempt %s failed (%s); the recovery task retries", attempt_id, exc
        )


async def create_order(
    ctx: OrdersContext, identity: TenantIdentity, data: OrderCreate, idempotency_key: str | None
) -> Placed:
    """Places the order once one of the placement slots is free. A request that waits longer than
    ORDERS_PLACEMENT_QUEUE_SECONDS for one answers 503 ORDERS_BUSY with Retry-After at once, so an
    overloaded service sheds work quickly instead of making every caller wait for its timeout."""
    if ctx.placements is None:
        return await _create_order(ctx, identity, data, idempotency_key)
    try:
        async with asyncio.timeout(ctx.settings.placement_queue_seconds):
            await ctx.placements.acquire()
    except TimeoutError:
        raise OrdersBusy("Too many orders are being placed right now; retry shortly.", headers=retry_in(1)) from None
    try:
        return await _create_order(ctx, identity, data, idempotency_key)
    finally:
        ctx.placements.release()


async def _create_order(
    ctx: OrdersContext, identity: TenantIdentity, data: OrderCreate, idempotency_key: str | None
) -> Placed:
    """Checks the user, reserves the stock, then stores the order and its event in one transaction.

    The attempt is recorded first, so that whatever happens after the reservation (an error, a
    cancelled request, a crash) its stock is released: here when possible, else by the recovery task.
    """
    tenant_id = identity.tenant_id
    _refuse_duplicate_products(data)
    request_hash = hashlib.sha256(data.model_dump_json().encode()).hexdigest()
    now = utcnow()
    attempt = OrderAttempt(
        id=new_id(),
        tenant_id=tenant_id,
        caller=identity.subject,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        state=AttemptState.PENDING,
        created_at=now,
        updated_at=now,
    )
    # Committed before anything happens elsewhere.
    async with ctx.transaction() as repo:
        # A second try takes the key when the earlier attempt holding it failed and is gone.
        for _ in range(2):
            if await repo.start_attempt(attempt):
                break
            assert idempotency_key is not None  # only the key is unique besides the fresh id
            placed = await _repeat(repo, identity, idempotency_key, request_hash)
            if placed is not None:
                return placed
        else:
            raise IdempotencyKeyInUse()

    try:
        # Past the request's deadline (`X-Request-Deadline`) no new step starts: its caller has given up.
        check_deadline("the user check")
        user = await upstream.check_user(ctx.users, identity)
        check_deadline("the reservation")
    except BaseException:
        await _run_to_completion(ctx, _forget_attempt(ctx, attempt.id))
        raise
    try:
        reservation = await upstream.reserve(ctx.inventory, identity, attempt.id, user.id, data.items)
    except ReservationRefused:
        await _run_to_completion(ctx, _forget_attempt(ctx, attempt.id))
        raise
    except BaseException:
        # No answer, or one that cannot be trusted: the stock may be held.
        await _run_to_completion(ctx, _compensate(ctx, identity, attempt.id))
        raise
    try:
        check_deadline("the order was stored")
        order, body = await _store(ctx, attempt, user, reservation)
    except BaseException:
        await _run_to_completion(ctx, _compensate(ctx, identity, attempt.id))
        raise
    # The order is placed: confirming its reservation finishes it, deadline or not.
    with no_deadline():
        await _confirm(ctx, identity, order)
    return Placed(body, replayed=False)


async def _repeat(repo: OrderRepository, caller: TenantIdentity, key: str, request_hash: str) -> Placed | None:
    """A request with a key the caller has used already: the first request's answer, an error saying
    why there is none yet, or None when the key has been freed meanwhile."""
    existing = await repo.get_attempt_by_key(caller.tenant_id, caller.subject, key)
    if existing is None:
        return None
    if existing.request_hash != request_hash:
        raise IdempotencyKeyReused()
    if existing.state != AttemptState.DONE or existing.response_body is None:
        # Still running, or failed and being cleaned up (the key is then free again shortly).
        raise IdempotencyKeyInUse()
    return Placed(existing.response_body, replayed=True)


async def _claim_credit(ctx: OrdersContext, attempt: OrderAttempt, user: upstream.CheckedUser, cents: int) -> None:
    """Holds `cents` of the user's credit for the attempt, or refuses with CREDIT_LIMIT_EXCEEDED.

    The check is made on the prices the reservation took, and concurrent orders of one user never pass
    the limit together: the check and the claim are one short transaction under a lock on the user
    (this process's lock first, then PostgreSQL's, which then waits only for other processes). The
    order itself is stored afterwards, in parallel with other orders; the claim ends with it (the
    attempt is no longer pending), or when the attempt is given up.
    """
    async with ctx.user_lock(attempt.tenant_id, user.id), ctx.transaction() as repo:
        await repo.lock_user(attempt.tenant_id, user.id)
        open_cents = await repo.open_total(attempt.tenant_id, user.id)
        if open_cents + cents > user.credit_limit_cents:
            raise CreditLimitExceeded.of(user.credit_limit_cents, open_cents, cents)
        if not await repo.claim_credit(attempt.id, user.id, cents):
            raise OrderAttemptExpired(
                "The order took too long to place and was given up; its stock was released. Try again.",
                headers=retry_in(1),
            )


async def _store(
    ctx: OrdersContext, attempt: OrderAttempt, user: upstream.CheckedUser, reservation: ReservationIn
) -> tuple[Order, str]:
    """Stores the order, its event and the attempt's answer, once the user's credit has room for it
    (`_claim_credit`). Raising leaves the stock to be released."""
    now = utcnow()
    items = [OrderItem(position=position, **item.model_dump()) for position, item in enumerate(reservation.items)]
    total_cents = sum(item.quantity * item.unit_price_cents for item in items)
    await _claim_credit(ctx, attempt, user, total_cents)
    order = Order(
        id=attempt.id,
        tenant_id=attempt.tenant_id,
        user_id=user.id,
        status=OrderState.CONFIRMED,
        total_cents=total_cents,
        reservation_id=reservation.id,
        reservation_status=ReservationState.RESERVED,
        created_at=now,
        updated_at=now,
        items=items,
        history=[OrderStatusChange(status=OrderState.CONFIRMED, created_at=now)],
    )
    out = order_out(order)
    body = out.model_dump_json()
    async with ctx.transaction() as repo:
        stored_body = body if attempt.idempotency_key is not None else None
        if not await repo.finish_attempt(attempt.id, stored_body, now):
            raise OrderAttemptExpired(
                "The order took too long to place and was given up; its stock was released. Try again.",
                headers=retry_in(1),
            )
        await repo.add(order)
        # Last, so the outbox rows of this transaction are held for the shortest time before commit.
        await repo.add(outbox_event(ORDER_CREATED, out))
    return order, body


def outbox_event(event_type: str, order: OrderOut) -> OutboxEvent:
    """The event of a change to `order`, with the trace context of the request that made it."""
    return OutboxEvent(
        id=new_id(),
        tenant_id=order.tenant_id,
        type=event_type,
        data=order.model_dump(mode="json"),
        traceparent=current_traceparent(),
    )


async def _confirm(ctx: OrdersContext, identity: Identity, order: Order) -> None:
    try:
        confirmed = await upstream.confirm(ctx.inventory, identity, order.reservation_id)
        if not confirmed:
            logger.error("reservation %s of stored order %s was released", order.reservation_id, order.id)
            return
        async with ctx.transaction() as repo:
            await repo.set_reservation_status(order.id, (ReservationState.RESERVED,), ReservationState.CONFIRMED)
    except PorticoError as exc:
        logger.warning("confirming reservation %s failed (%s); the recovery task retries", order.reservation_id, exc)


async def credit(ctx: OrdersContext, identity: TenantIdentity) -> CreditOut:
    """The caller's credit: the limit in force (from the users service) and what open orders use."""
    user = await upstream.check_user(ctx.users, identity)
    async with ctx.transaction() as repo:
        open_cents = await repo.open_total(identity.tenant_id, user.id)
    return CreditOut(
        user_id=user.id,
        credit_limit_cents=user.credit_limit_cents,
        open_cents=open_cents,
        available_cents=max(0, user.credit_limit_cents - open_cents),
    )


async def _order(repo: OrderRepository, tenant_id: str, order_id: str) -> Order:
    """Another tenant's order answers exactly as a missing one does."""
    return await repo.one(Order, tenant_id, order_id, OrderNotFound)


async def get_order(ctx: OrdersContext, tenant_id: str, order_id: str) -> OrderOut:
    async with ctx.transaction() as repo:
        return order_out(await _order(repo, tenant_id, order_id))


async def list_orders(
    ctx: OrdersContext, tenant_id: str, page: PageQuery, *, status: str | None, user_id: str | None
) -> Page[OrderOut]:
    where = matching((Order.status, status), (Order.user_id, user_id))
    position = page.position()
    async with ctx.transaction() as repo:
        return await repo.list_page(Order, tenant_id, position, page.limit, order_out, *where)


async def cancel_order(ctx: OrdersContext, identity: TenantIdentity, order_id: str) -> OrderOut:
    """Cancels the order and writes `order.cancelled` in one transaction, then returns its stock.

    The cancellation stands even if the inventory service cannot be reached: the recovery task
    keeps releasing until it succeeds.
    """
    tenant_id = identity.tenant_id
    async with ctx.transaction() as repo:
        now = utcnow()
        if not await repo.mark_cancelled(tenant_id, order_id, now):
            order = await _order(repo, tenant_id, order_id)
            raise OrderAlreadyCancelled(
                f"Order {order_id} is already {order.status}.",
                errors=[{"loc": ["status"], "field": "status", "msg": f"is {order.status}"}],
            )
        order = await _order(repo, tenant_id, order_id)
        order.history.append(OrderStatusChange(status=OrderState.CANCELLED, created_at=now))
        await repo.save()
        out = order_out(order)
        await repo.add(outbox_event(ORDER_CANCELLED, out))
    await release_cancelled(ctx, identity, order)
    return out


async def release_cancelled(ctx: OrdersContext, identity: Identity, order: Order) -> None:
    try:
        await upstream.release_order(ctx.inventory, identity, order.id)
        async with ctx.transaction() as repo:
            await repo.set_reservation_status(order.id, OPEN_RESERVATION, ReservationState.RELEASED)
    except PorticoError as exc:
        logger.warning(
            "releasing the stock of cancelled order %s failed (%s); the recovery task retries", order.id, exc
        )


async def publish_event(ctx: OrdersContext, event: PublishedEvent) -> None:
    """Adds `event` to the outbox unless its id is there already (a publisher's retry)."""
    async with ctx.transaction() as repo:
        await repo.insert_if_absent(
            OutboxEvent(
                id=event.id,
                tenant_id=event.tenant_id,
                type=event.type,
                data=event.data,
                traceparent=current_traceparent(),
            )
        )


async def event_feed(ctx: OrdersContext, after: int, limit: int, tenant_id: str | None = None) -> EventFeed:
    try:
        async with ctx.transaction() as repo:
            events = await repo.events_after(after, limit, ctx.settings.events_lock_timeout_ms, tenant_id)
            pruned_through = await repo.pruned_through()
    except LockNotAvailable as exc:
        raise EventsBusy(
            "Order transactions in flight held the feed longer than allowed; retry.", headers=retry_in(1)
        ) from exc
    items = [
        EventOut.model_validate(
            {
                "seq": event.seq,
                "id": event.id,
                "type": event.type,
                "tenant_id": event.tenant_id,
                "created_at": event.created_at,
                "data": event.data,
                "traceparent": event.traceparent,
            }
        )
        for event in events
    ]
    return EventFeed(items=items, next_after=items[-1].seq if items else after, pruned_through=pruned_through)
