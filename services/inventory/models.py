from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.inventory.schemas import MAX_STOCK
from shared.db import SerialKey, UTCDateTime, new_id, owned_rows, owner_key, utcnow
from shared.repository import TenantRow


class Base(DeclarativeBase):
    pass


class Stamped(Base):
    """A tenant's row that changes after it is made: `new` gives it a fresh id, and stamps it created
    and updated at the same moment."""

    __abstract__ = True

    @classmethod
    def new(cls, tenant_id: str, **values: Any) -> Self:
        now = utcnow()
        return cls(id=new_id(), tenant_id=tenant_id, created_at=now, updated_at=now, **values)


class Product(Stamped, TenantRow):
    __tablename__ = "products"
    __table_args__ = (
        UniqueConstraint("tenant_id", "sku", name="uq_products_tenant_sku"),
        # The last line of defence: no code path, however wrong, can store negative stock.
        CheckConstraint("stock >= 0", name="ck_products_stock_not_negative"),
        CheckConstraint(f"stock <= {MAX_STOCK}", name="ck_products_stock_at_most_max"),
        CheckConstraint("price_cents >= 0", name="ck_products_price_not_negative"),
        Index("ix_products_tenant_created", "tenant_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36))
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    price_cents: Mapped[int] = mapped_column(BigInteger)
    stock: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class StockAdjustment(Base, TenantRow):
    """One manual change of a product's stock, kept as an audit trail."""

    __tablename__ = "stock_adjustments"
    __table_args__ = (Index("ix_stock_adjustments_product", "tenant_id", "product_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36))
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"))
    delta: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(200))
    stock_after: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReservationState(StrEnum):
    """`Reservation.status` (`schemas.ReservationStatus`): reserved -> confirmed (with its order) ->
    released, or reserved -> released."""

    RESERVED = "reserved"
    CONFIRMED = "confirmed"
    RELEASED = "released"


# A reservation whose stock is still held.
OPEN_RESERVATION = (ReservationState.RESERVED, ReservationState.CONFIRMED)


class Reservation(Stamped, TenantRow):
    """Stock held for one order. `reserved` -> `confirmed` once the order is stored; either -> `released`.

    (tenant_id, order_id) is unique, so an order can hold at most one reservation, a repeated reserve
    call cannot take stock twice, and a release that arrives before its reserve leaves a `released`
    marker that the late reserve then runs into.
    """

    __tablename__ = "reservations"
    __table_args__ = (
        UniqueConstraint("tenant_id", "order_id", name="uq_reservations_tenant_order"),
        Index("ix_reservations_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_reservations_tenant_user", "tenant_id", "user_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36))
    order_id: Mapped[str] = mapped_column(String(64))
    # The user the order is for, as the orders service says (None: a reservation made before it said).
    user_id: Mapped[str | None] = mapped_column(String(64), default=None)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    items: Mapped[list[ReservationItem]] = owned_rows("ReservationItem.position")


class ReservationItem(SerialKey, Base):
    __tablename__ = "reservation_items"

    reservation_id: Mapped[str] = owner_key("reservations.id")
    # Where the item stood in the request, so answers list items in the order they were asked for.
    position: Mapped[int] = mapped_column(Integer)
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id", ondelete="RESTRICT"), index=True)
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    quantity: Mapped[int] = mapped_column(BigInteger)
    # The price when the stock was taken, read in the same statement that took it.
    unit_price_cents: Mapped[int] = mapped_column(BigInteger)
