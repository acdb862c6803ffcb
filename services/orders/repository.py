"""All SQL of the orders service. Everything a client can reach is scoped by tenant; only the event
feed and the recovery task read across tenants. The service's functions own the transactions these
run in (`OrdersContext.transaction`)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import delete, func, select, text, update

from services.orders.models import AttemptState, Order, OrderAttempt, OrderState, OutboxEvent, OutboxRetention
from shared.db import raising_lock_not_available, rows_changed
from shared.repository import Repository


class OrderRepository(Repository):
    # Credit

    async def lock_user(self, tenant_id: str, user_id: str) -> None:
        """Serialises, until the transaction ends, the transactions that store an order for this user,
        so two concurrent orders cannot both fit in the credit that only one of them fits in.
        (PostgreSQL; SQLite has one writer at a time already.)"""
        if self.session.get_bind().dialect.name == "postgresql":
            key = f"credit:{tenant_id}:{user_id}"
            await self.session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})

    async def open_total(self, tenant_id: str, user_id: str) -> int:
        """What the user's open (not cancelled) orders add up to, with the credit their pending attempts
        hold (an attempt's order is stored in the transaction that ends its claim).

        One statement, so one snapshot: read as two, an order committed between them would be counted
        in neither (its claim already ended, the order not yet seen) and let a concurrent order pass
        the limit.
        """
        orders = (
            select(func.coalesce(func.sum(Order.total_cents), 0))
            .where(Order.tenant_id == tenant_id, Order.user_id == user_id, Order.status != OrderState.CANCELLED)
            .scalar_subquery()
        )
        claims = (
            select(func.coalesce(func.sum(OrderAttempt.credit_cents), 0))
            .where(
                OrderAttempt.tenant_id == tenant_id,
                OrderAttempt.user_id == user_id,
                OrderAttempt.state == AttemptState.PENDING,
            )
            .scalar_subquery()
        )
        total = await self.session.scalar(select(orders + claims))
        return int(total or 0)

    async def claim_credit(self, attempt_id: str, user_id: str, cents: int) -> bool:
        """Records the credit a pending attempt holds; False when it is no longer pending."""
        claimed = await self.session.scalar(
            update(OrderAttempt)
            .where(OrderAttempt.id == attempt_id, OrderAttempt.state == AttemptState.PENDING)
            .values(user_id=user_id, credit_cents=cents)
            .returning(OrderAttempt.id)
        )
        return claimed is not None

    # Attempts and idempotency keys

    async def start_attempt(self, attempt: OrderAttempt) -> bool:
        """Records the attempt; False when its idempotency key is already taken."""
        return await self.insert_if_absent(attempt)

    async def get_attempt_by_key(self, tenant_id: str, caller: str, key: str) -> OrderAttempt | None:
        return await self.session.scalar(
            select(OrderAttempt).where(
                OrderAttempt.tenant_id == tenant_id, OrderAttempt.caller == caller, OrderAttempt.idempotency_key == key
            )
        )

    async def finish_attempt(self, attempt_id: str, response_body: str | None, now: datetime) -> bool:
        """Closes a pending attempt: kept with its answer when it has a key, removed otherwise.

        False when the attempt is no longer pending (the recovery task gave up on it), in which case
        the order must not be stored.
        """
        pending = (OrderAttempt.id == attempt_id, OrderAttempt.state == AttemptState.PENDING)
        if response_body is None:
            gone = await self.session.scalar(delete(OrderAttempt).where(*pending).returning(OrderAttempt.id))
            return gone is not None
        done = await self.session.scalar(
            update(OrderAttempt)
            .where(*pending)
            .values(state=AttemptState.DONE, response_body=response_body, updated_at=now)
            .returning(OrderAttempt.id)
        )
        return done is not None

    async def abandon_attempt(self, attempt_id: str, now: datetime) -> None:
        await self.session.execute(
            update(OrderAttempt)
            .where(OrderAttempt.id == attempt_id, OrderAttempt.state == AttemptState.PENDING)
            .values(state=AttemptState.ABANDONED, updated_at=now)
        )

    async def delete_attempt(self, attempt_id: str) -> None:
        await self.session.execute(delete(OrderAttempt).where(OrderAttempt.id == attempt_id))

    async def abandon_stale_attempts(self, started_before: datetime) -> None:
        # updated_at is left as it was, so the recovery task releases these at once.
        await self.session.execute(
            update(OrderAttempt)
            .where(OrderAttempt.state == AttemptState.PENDING, OrderAttempt.updated_at < started_before)
            .values(state=AttemptState.ABANDONED)
        )

    async def abandoned_attempts(self, changed_before: datetime, limit: int) -> Sequence[OrderAttempt]:
        query = (
            select(OrderAttempt)
            .where(OrderAttempt.state == AttemptState.ABANDONED, OrderAttempt.updated_at < changed_before)
            .order_by(OrderAttempt.updated_at)
            .limit(limit)
        )
        return (await self.session.scalars(query)).all()

    async def purge_done_attempts(self, finished_before: datetime) -> None:
        await self.session.execute(
            delete(OrderAttempt).where(
                OrderAttempt.state == AttemptState.DONE, OrderAttempt.updated_at < finished_before
            )
        )

    # Orders

    async def mark_cancelled(self, tenant_id: str, order_id: str, now: datetime) -> bool:
        """Cancels a confirmed order; True only for the one request that did (the row lock serialises
        concurrent cancels, and the later ones no longer find it confirmed)."""
        cancelled = await self.session.scalar(
            update(Order)
            .where(Order.id == order_id, Order.tenant_id == tenant_id, Order.status == OrderState.CONFIRMED)
            .values(status=OrderState.CANCELLED, updated_at=now)
            .returning(Order.id)
        )
        return cancelled is not None

    async def set_reservation_status(self, order_id: str, from_statuses: Collection[str], to_status: str) -> None:
        await self.session.execute(
            update(Order)
            .where(Order.id == order_id, Order.reservation_status.in_(list(from_statuses)))
            .values(reservation_status=to_status)
        )

    async def orders_to_reconcile(
        self, status: str, reservation_status: str, changed_before: datetime, limit: int
    ) -> Sequence[Order]:
        query = (
            select(Order)
            .where(
                Order.status == status,
                Order.reservation_status == reservation_status,
                Order.updated_at < changed_before,
            )
            .order_by(Order.updated_at)
            .limit(limit)
        )
        return (await self.session.scalars(query)).all()

    # The event feed

    async def pruned_through(self) -> int:
        value = await self.session.scalar(select(OutboxRetention.pruned_through).where(OutboxRetention.id == 1))
        return int(value or 0)

    async def prune_events(self, before: datetime, batch: int) -> int:
        """Removes up to `batch` of the oldest events written before `before`; answers how many. The
        highest seq removed is kept (`pruned_through`), so the feed can tell a reader it missed some."""
        oldest = (
            select(OutboxEvent.seq).where(OutboxEvent.created_at < before).order_by(OutboxEvent.seq).limit(batch)
        ).subquery()
        through = await self.session.scalar(select(func.max(oldest.c.seq)))
        if through is None:
            return 0
        removed = await self.session.execute(delete(OutboxEvent).where(OutboxEvent.seq <= through))
        await self.session.execute(
            update(OutboxRetention)
            .where(OutboxRetention.id == 1, OutboxRetention.pruned_through < through)
            .values(pruned_through=through)
        )
        return rows_changed(removed)

    async def events_after(
        self, after: int, limit: int, lock_timeout_ms: int, tenant_id: str | None = None
    ) -> Sequence[OutboxEvent]:
        """Events with seq > `after` (of one tenant, or all), in seq order, never skipping one that
        commits later.

        On PostgreSQL a sequence value is drawn when a row is inserted, but rows become visible when
        their transactions commit, which can be in another order: a reader could serve seq 8, move
        its cursor past it, and only then see seq 7 commit. Taking the table in SHARE mode waits for
        every transaction that has inserted into the outbox (they hold ROW EXCLUSIVE until they end)
        and holds off new inserts until this read's transaction ends. So every seq drawn so far is
        either committed and visible here or rolled back, and every later one is higher than all of
        them. The wait is as long as the order transactions still in flight, which insert their event
        last and commit at once; longer than `lock_timeout_ms` raises `LockNotAvailable`. SQLite has
        one writer at a time, so seq order is commit order there.
        """
        connection = await self.session.connection()
        if connection.dialect.name == "postgresql":
            await self.session.execute(select(func.set_config("lock_timeout", f"{lock_timeout_ms}ms", True)))
            with raising_lock_not_available():
                await self.session.execute(text("LOCK TABLE outbox IN SHARE MODE"))
        query = select(OutboxEvent).where(OutboxEvent.seq > after).order_by(OutboxEvent.seq).limit(limit)
        if tenant_id is not None:
            # Served by ix_outbox_tenant_seq.
            query = query.where(OutboxEvent.tenant_id == tenant_id)
        return (await self.session.scalars(query)).all()
