"""All SQL of the inventory service. Every statement is scoped by tenant."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import select, update

from services.inventory.errors import SkuTaken
from services.inventory.models import Product, Reservation, ReservationItem
from shared.db import utcnow
from shared.repository import Repository


class TakenStock(NamedTuple):
    sku: str
    name: str
    unit_price_cents: int


class InventoryRepository(Repository):
    # Products

    async def add_product(self, product: Product) -> None:
        self.session.add(product)
        await self.save_product(product)

    async def products_by_ids(self, tenant_id: str, ids: Collection[str]) -> Sequence[Product]:
        query = select(Product).where(Product.tenant_id == tenant_id, Product.id.in_(ids))
        return (await self.session.scalars(query)).all()

    async def save_product(self, product: Product) -> None:
        await self.flush_unique(
            SkuTaken(
                f"The SKU {product.sku} is already used by another product.",
                errors=[{"loc": ["body", "sku"], "field": "sku", "msg": "already in use", "type": "unique"}],
            )
        )

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

    async def products_by_id(self, tenant_id: str, product_ids: Collection[str]) -> dict[str, Product]:
        rows = await self.session.scalars(
            select(Product).where(Product.tenant_id == tenant_id, Product.id.in_(list(product_ids)))
        )
        return {product.id: product for product in rows}

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

    async def return_stock(self, tenant_id: str, product_id: str, quantity: int, max_stock: int) -> int:
        """Puts `quantity` units back, up to `max_stock`; answers how many did not fit (0 nearly always).

        The common case is one conditional statement. Only when it would pass the maximum is the row
        locked and read, to fill it up to the maximum and count what is left over.
        """
        fits = (Product.id == product_id, Product.tenant_id == tenant_id, Product.stock + quantity <= max_stock)
        returned = await self.session.scalar(
            update(Product)
            .where(*fits)
            .values(stock=Product.stock + quantity, updated_at=utcnow())
            .returning(Product.id)
        )
        if returned is not None:
            return 0
        stock = await self.session.scalar(
            select(Product.stock).where(Product.id == product_id, Product.tenant_id == tenant_id).with_for_update()
        )
        if stock is None:  # pragma: no cover - products are never deleted while reservations name them
            return 0
        kept = min(stock + quantity, max_stock)
        await self.session.execute(
            update(Product)
            .where(Product.id == product_id, Product.tenant_id == tenant_id)
            .values(stock=kept, updated_at=utcnow())
        )
        return stock + quantity - kept

    # Reservations

    async def claim_order(self, reservation: Reservation) -> bool:
        """Inserts the reservation row; False when the order already has one. Inserted before any
        stock is taken, so a concurrent duplicate waits on it and then finds it."""
        return await self.insert_if_absent(reservation)

    async def add_reservation_items(self, reservation: Reservation, items: Sequence[ReservationItem]) -> None:
        reservation.items.extend(items)
        await self.session.flush()

    async def get_reservation_for_order(self, tenant_id: str, order_id: str) -> Reservation | None:
        return await self.session.scalar(
            select(Reservation)
            .where(Reservation.order_id == order_id, Reservation.tenant_id == tenant_id)
            .execution_options(populate_existing=True)
        )

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
