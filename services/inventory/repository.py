"""All SQL of the inventory service. Every statement is scoped by tenant."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.inventory.models import Product, Reservation, ReservationItem, StockAdjustment
from shared.db import utcnow
from shared.errors import Conflict
from shared.pagination import Cursor, older_than


class SkuTaken(Conflict):
    error_code = "SKU_TAKEN"
    title = "SKU already in use"
    slug = "sku-taken"


class TakenStock(NamedTuple):
    sku: str
    name: str
    unit_price_cents: int


class InventoryRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # Products

    async def add_product(self, product: Product) -> None:
        self.session.add(product)
        await self._flush_unique_sku(product.sku)

    async def save_product(self, product: Product) -> None:
        await self._flush_unique_sku(product.sku)

    async def _flush_unique_sku(self, sku: str) -> None:
        try:
            await self.session.flush()
        except IntegrityError as exc:
            await self.session.rollback()
            raise SkuTaken(
                f"The SKU {sku} is already used by another product.",
                errors=[{"loc": ["body", "sku"], "field": "sku", "msg": "already in use", "type": "unique"}],
            ) from exc

    async def get_product(self, tenant_id: str, product_id: str) -> Product | None:
        return await self.session.scalar(
            select(Product).where(Product.id == product_id, Product.tenant_id == tenant_id)
        )

    async def list_products(self, tenant_id: str, limit: int, cursor: Cursor | None) -> Sequence[Product]:
        query = select(Product).where(Product.tenant_id == tenant_id)
        if cursor is not None:
            query = query.where(older_than(Product.created_at, Product.id, cursor))
        query = query.order_by(Product.created_at.desc(), Product.id.desc()).limit(limit + 1)
        return (await self.session.scalars(query)).all()

    async def adjust_stock(self, tenant_id: str, product_id: str, delta: int, max_stock: int) -> int | None:
        """Adds `delta` in one conditional statement; None when the result would leave [0, max_stock]."""
        new_stock = Product.stock + delta
        return await self.session.scalar(
            update(Product)
            .where(
                Product.id == product_id,
                Product.tenant_id == tenant_id,
                new_stock >= 0,
                new_stock <= max_stock,
            )
            .values(stock=new_stock, updated_at=utcnow())
            .returning(Product.stock)
        )

    async def add_adjustment(self, adjustment: StockAdjustment) -> None:
        self.session.add(adjustment)
        await self.session.flush()

    async def list_adjustments(
        self, tenant_id: str, product_id: str, limit: int, cursor: Cursor | None
    ) -> Sequence[StockAdjustment]:
        query = select(StockAdjustment).where(
            StockAdjustment.tenant_id == tenant_id, StockAdjustment.product_id == product_id
        )
        if cursor is not None:
            query = query.where(older_than(StockAdjustment.created_at, StockAdjustment.id, cursor))
        query = query.order_by(StockAdjustment.created_at.desc(), StockAdjustment.id.desc()).limit(limit + 1)
        return (await self.session.scalars(query)).all()

    # Stock taken and returned by reservations

    async def take_stock(self, tenant_id: str, product_id: str, quantity: int) -> TakenStock | None:
        """Takes `quantity` units if, and only if, that many are in stock, in one statement.

        The condition is evaluated against the row as it stands when the update gets it (PostgreSQL
        re-checks it after waiting for a concurrent writer's lock; SQLite has one writer at a time), so
        no interleaving of concurrent reservations can take stock below zero.
        """
        row = (
            await self.session.execute(
                update(Product)
                .where(Product.id == product_id, Product.tenant_id == tenant_id, Product.stock >= quantity)
                .values(stock=Product.stock - quantity, updated_at=utcnow())
                .returning(Product.sku, Product.name, Product.price_cents)
            )
        ).one_or_none()
        return None if row is None else TakenStock(row.sku, row.name, row.price_cents)

    async def return_stock(self, tenant_id: str, product_id: str, quantity: int) -> None:
        await self.session.execute(
            update(Product)
            .where(Product.id == product_id, Product.tenant_id == tenant_id)
            .values(stock=Product.stock + quantity, updated_at=utcnow())
        )

    # Reservations

    async def claim_order(self, reservation: Reservation) -> bool:
        """Inserts the reservation row; False (and the transaction rolled back) when the order already
        has one. Inserted before any stock is taken, so a concurrent duplicate waits on it and fails."""
        self.session.add(reservation)
        try:
            await self.session.flush()
        except IntegrityError:
            await self.session.rollback()
            return False
        return True

    async def add_reservation_items(self, reservation: Reservation, items: Sequence[ReservationItem]) -> None:
        reservation.items.extend(items)
        await self.session.flush()

    async def get_reservation(self, tenant_id: str, reservation_id: str) -> Reservation | None:
        return await self.session.scalar(
            select(Reservation)
            .where(Reservation.id == reservation_id, Reservation.tenant_id == tenant_id)
            .execution_options(populate_existing=True)
        )

    async def get_reservation_for_order(self, tenant_id: str, order_id: str) -> Reservation | None:
        return await self.session.scalar(
            select(Reservation)
            .where(Reservation.order_id == order_id, Reservation.tenant_id == tenant_id)
            .execution_options(populate_existing=True)
        )

    async def list_reservations(
        self, tenant_id: str, limit: int, cursor: Cursor | None, filters: dict[str, Any]
    ) -> Sequence[Reservation]:
        query = select(Reservation).where(Reservation.tenant_id == tenant_id)
        if filters.get("order_id") is not None:
            query = query.where(Reservation.order_id == filters["order_id"])
        if filters.get("status") is not None:
            query = query.where(Reservation.status == filters["status"])
        if cursor is not None:
            query = query.where(older_than(Reservation.created_at, Reservation.id, cursor))
        query = query.order_by(Reservation.created_at.desc(), Reservation.id.desc()).limit(limit + 1)
        return (await self.session.scalars(query)).all()

    async def move_reservation(
        self, tenant_id: str, reservation_id: str, from_statuses: Collection[str], to_status: str, now: datetime
    ) -> bool:
        """Changes the status only from one of `from_statuses`; True for the one caller that did.

        Concurrent callers serialise on the row, and each later one finds the status already moved,
        which is what makes a release return stock exactly once.
        """
        moved = await self.session.scalar(
            update(Reservation)
            .where(
                Reservation.id == reservation_id,
                Reservation.tenant_id == tenant_id,
                Reservation.status.in_(list(from_statuses)),
            )
            .values(status=to_status, updated_at=now)
            .returning(Reservation.id)
        )
        return moved is not None
