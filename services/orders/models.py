from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import AutoIncrement, SerialKey, UTCDateTime, new_id, owned_rows, owner_key, utcnow
from shared.repository import TenantRow
from shared.telemetry import TRACEPARENT_LENGTH


class Base(DeclarativeBase):
    pass


class OrderState(StrEnum):
    """`Order.status` and `OrderStatusChange.status`: what clients see (`schemas.OrderStatus`)."""

    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"


class ReservationState(StrEnum):
    """`Order.reservation_status`: what this service last knew of the order's stock at the
    inventory service (its reservation's own status there)."""

    RESERVED = "reserved"
    CONFIRMED = "confirmed"
    RELEASED = "released"


# A reservation whose stock is still held: reserved, or confirmed with the order.
OPEN_RESERVATION = (ReservationState.RESERVED, ReservationState.CONFIRMED)


class AttemptState(StrEnum):
    """`OrderAttempt.state`: pending -> done (order stored) | abandoned (its stock is being
    released, then the row goes)."""

    PENDING = "pending"
    DONE = "done"
    ABANDONED = "abandoned"


class Order(Base, TenantRow):
    """A placed order. `status` is what clients see (confirmed, cancelled); `reservation_status` is
    what this service last knew of the stock held for it at the inventory service."""

    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_orders_tenant_user", "tenant_id", "user_id"),
        Index("ix_orders_recovery", "status", "reservation_status", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36))
    user_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    total_cents: Mapped[int] = mapped_column(BigInteger)
    reservation_id: Mapped[str] = mapped_column(String(36))
    reservation_status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    items: Mapped[list[OrderItem]] = owned_rows("OrderItem.position")
    history: Mapped[list[OrderStatusChange]] = owned_rows("OrderStatusChange.id")


class OrderItem(SerialKey, Base):
    __tablename__ = "order_items"

    order_id: Mapped[str] = owner_key("orders.id")
    position: Mapped[int] = mapped_column(Integer)
    product_id: Mapped[str] = mapped_column(String(64))
    # Copied from the product when its stock was reserved: later edits of the product leave the order alone.
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    quantity: Mapped[int] = mapped_column(BigInteger)
    unit_price_cents: Mapped[int] = mapped_column(BigInteger)


class OrderStatusChange(SerialKey, Base):
    __tablename__ = "order_status_history"

    order_id: Mapped[str] = owner_key("orders.id")
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class OutboxEvent(Base):
    """An order event, written in the transaction that made the change. `seq` orders the feed."""

    __tablename__ = "outbox"
    # AUTOINCREMENT: SQLite then never hands out a seq again, even that of a deleted last row.
    __table_args__ = (Index("ix_outbox_tenant_seq", "tenant_id", "seq"), {"sqlite_autoincrement": True})

    seq: Mapped[int] = mapped_column(AutoIncrement, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36))
    type: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The W3C trace context of the request that wrote the event: its deliveries continue that trace.
    traceparent: Mapped[str | None] = mapped_column(String(TRACEPARENT_LENGTH), default=None)


class OutboxRetention(Base):
    """One row: every event with a seq up to `pruned_through` has been removed by the retention."""

    __tablename__ = "outbox_retention"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pruned_through: Mapped[int] = mapped_column(BigInteger, server_default="0")


class OrderAttempt(Base):
    """An order being placed, recorded before stock is reserved for it.

    It is what lets a crash between reserving and storing be repaired (the recovery task releases
    the stock of attempts that never finished) and what deduplicates an `Idempotency-Key`: the key is
    unique per tenant and caller, and a finished attempt keeps the exact answer it gave.
    """

    __tablename__ = "order_attempts"
    __table_args__ = (
        UniqueConstraint("tenant_id", "caller", "idempotency_key", name="uq_order_attempts_caller_key"),
        Index("ix_order_attempts_state", "state", "updated_at"),
        Index("ix_order_attempts_user", "tenant_id", "user_id", "state"),
    )

    # The id the order gets if the attempt succeeds; the reservation at the inventory service names it.
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(36))
    # Who placed it (the identity's subject): a key is the caller's own, as at the gateway.
    caller: Mapped[str] = mapped_column(String(64), server_default="")
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # SHA-256 of the request, so a key reused for a different order is told apart from a retry.
    request_hash: Mapped[str] = mapped_column(String(64))
    # pending -> done (order stored) | abandoned (its stock is being released, then the row goes).
    state: Mapped[str] = mapped_column(String(16))
    response_body: Mapped[str | None] = mapped_column(Text)
    # The credit a pending attempt holds for its user until its order is stored (or it is given up):
    # counted with the user's open orders, so concurrent orders never pass the limit together.
    user_id: Mapped[str | None] = mapped_column(String(36), default=None)
    credit_cents: Mapped[int | None] = mapped_column(BigInteger, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
