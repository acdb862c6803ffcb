"""Rules of the inventory service: products, stock and reservations. Every function runs in the
request's transaction (its repository shares the request's session): raising rolls it all back."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from services.inventory.errors import (
    InsufficientStock,
    ProductNotFound,
    ReservationMismatch,
    ReservationNotFound,
    ReservationReleased,
    StockLimitExceeded,
)
from services.inventory.models import (
    OPEN_RESERVATION,
    Product,
    Reservation,
    ReservationItem,
    ReservationState,
    StockAdjustment,
)
from services.inventory.repository import InventoryRepository
from services.inventory.schemas import (
    MAX_STOCK,
    ProductCreate,
    ProductOut,
    ProductUpdate,
    ReservationCreate,
    ReservationOut,
    StockAdjustmentCreate,
    StockAdjustmentOut,
    StockCheck,
    StockCheckLine,
    StockCheckOut,
)
from shared.db import new_id, utcnow
from shared.errors import ValidationFailed
from shared.pagination import Page, PageQuery
from shared.repository import ChildRows, matching

logger = logging.getLogger("portico.inventory")

# A product's stock adjustments, listed under it.
ADJUSTMENTS = ChildRows(StockAdjustment, StockAdjustment.product_id, Product, ProductNotFound)


def field_error(field: str, msg: str, type_: str, **extra: Any) -> dict[str, Any]:
    return {"loc": ["body", *field.split(".")], "field": field, "msg": msg, "type": type_, **extra}


async def create_product(repo: InventoryRepository, tenant_id: str, data: ProductCreate) -> Product:
    product = Product.new(tenant_id, sku=data.sku, name=data.name, price_cents=data.price_cents, stock=data.stock)
    await repo.add_product(product)
    return product


async def get_product(repo: InventoryRepository, tenant_id: str, product_id: str) -> Product:
    """Another tenant's product answers exactly as a missing one does."""
    return await repo.one(Product, tenant_id, product_id, ProductNotFound)


async def list_products(
    repo: InventoryRepository, tenant_id: str, page: PageQuery, ids: Sequence[str] | None = None
) -> Page[ProductOut]:
    """A page of the tenant's products, or (with `ids`) the ones named, in the order named: a batch
    read for callers that hold many ids (GraphQL's product loader). Ids of no product of the tenant
    are left out."""
    if ids is None:
        return await repo.list_page(Product, tenant_id, page.position(), page.limit, ProductOut.model_validate)
    found = {product.id: product for product in await repo.products_by_ids(tenant_id, set(ids))}
    named = dict.fromkeys(ids)
    return Page(items=[ProductOut.model_validate(found[i]) for i in named if i in found], next_cursor=None)


async def update_product(repo: InventoryRepository, tenant_id: str, product_id: str, data: ProductUpdate) -> Product:
    product = await get_product(repo, tenant_id, product_id)
    changes = data.model_dump(exclude_unset=True)
    if not changes:
        return product
    for name, value in changes.items():
        setattr(product, name, value)
    product.updated_at = utcnow()
    await repo.save_product(product)
    return product


async def adjust_stock(
    repo: InventoryRepository, tenant_id: str, product_id: str, data: StockAdjustmentCreate
) -> StockAdjustment:
    stock = await repo.adjust_stock(tenant_id, product_id, data.delta, MAX_STOCK)
    if stock is None:
        product = await get_product(repo, tenant_id, product_id)
        if data.delta < 0:
            raise InsufficientStock(
                f"Product {product_id} has {product.stock} in stock; removing {-data.delta} would go below zero.",
                errors=[field_error("delta", "would take stock below zero", "stock", available=product.stock)],
            )
        raise StockLimitExceeded(
            f"Product {product_id} has {product.stock} in stock; the most a product holds is {MAX_STOCK}.",
            errors=[field_error("delta", f"would take stock above {MAX_STOCK}", "stock", available=product.stock)],
        )
    adjustment = StockAdjustment(
        id=new_id(),
        tenant_id=tenant_id,
        product_id=product_id,
        delta=data.delta,
        reason=data.reason,
        stock_after=stock,
        created_at=utcnow(),
    )
    await repo.add(adjustment)
    return adjustment


async def list_adjustments(
    repo: InventoryRepository, tenant_id: str, product_id: str, page: PageQuery
) -> Page[StockAdjustmentOut]:
    """A product's adjustments, newest first; 404 for a product the tenant does not have."""
    return await repo.list_under(ADJUSTMENTS, tenant_id, product_id, page, StockAdjustmentOut.model_validate)


def _duplicate_products(data: ReservationCreate | StockCheck) -> None:
    seen: set[str] = set()
    for index, item in enumerate(data.items):
        if item.product_id in seen:
            raise ValidationFailed(
                "Each product may appear only once; add up its quantities instead.",
                errors=[field_error(f"items.{index}.product_id", "duplicate product", "duplicate")],
            )
        seen.add(item.product_id)


def _same_items(reservation: Reservation, data: ReservationCreate) -> bool:
    return sorted((i.product_id, i.quantity) for i in reservation.items) == sorted(
        (i.product_id, i.quantity) for i in data.items
    )


async def reserve(repo: InventoryRepository, tenant_id: str, data: ReservationCreate) -> tuple[Reservation, bool]:
    """Takes every item's stock or none of it. Answers (reservation, created).

    Repeating the call for the same order with the same items answers the existing reservation
    instead of taking stock again, so the caller may retry a call whose answer it never got.
    """
    _duplicate_products(data)
    reservation = Reservation.new(
        tenant_id, order_id=data.order_id, user_id=data.user_id, status=ReservationState.RESERVED, items=[]
    )
    if not await repo.claim_order(reservation):
        existing = await repo.get_reservation_for_order(tenant_id, data.order_id)
        if existing is None:  # pragma: no cover - the row that conflicted cannot vanish: none is deleted
            raise ReservationMismatch(f"Order {data.order_id} could not be reserved; try again.")
        if existing.status == ReservationState.RELEASED:
            raise ReservationReleased(f"The reservation for order {data.order_id} was already released.")
        if not _same_items(existing, data):
            raise ReservationMismatch(f"Order {data.order_id} already holds a reservation for other items.")
        return existing, False
    items: list[ReservationItem] = []
    # Rows are locked in one global order (by product id), so two multi-item reservations can never
    # wait on each other's locks.
    for index, item in sorted(enumerate(data.items), key=lambda pair: pair[1].product_id):
        taken = await repo.take_stock(tenant_id, item.product_id, item.quantity)
        if taken is None:
            # Raising rolls the whole transaction back: stock taken for earlier items returns with it.
            product = await repo.get(Product, tenant_id, item.product_id)
            if product is None:
                raise ProductNotFound(
                    f"No product {item.product_id}.",
                    errors=[field_error(f"items.{index}.product_id", "unknown product", "not_found")],
                )
            raise InsufficientStock(
                f"Product {item.product_id} has {product.stock} in stock; {item.quantity} were asked for.",
                errors=[
                    field_error(f"items.{index}.quantity", "not enough in stock", "stock", available=product.stock)
                ],
            )
        items.append(
            ReservationItem(position=index, product_id=item.product_id, quantity=item.quantity, **taken._asdict())
        )
    items.sort(key=lambda i: i.position)
    await repo.add_reservation_items(reservation, items)
    return reservation, True


async def check_stock(repo: InventoryRepository, tenant_id: str, data: StockCheck) -> StockCheckOut:
    """Whether every line is in stock now, and what the lines cost; takes nothing. Refuses like a
    reservation would: 404 for an unknown product, 409 for too little stock, naming the line."""
    _duplicate_products(data)
    products = await repo.products_by_id(tenant_id, [item.product_id for item in data.items])
    lines: list[StockCheckLine] = []
    for index, item in enumerate(data.items):
        product = products.get(item.product_id)
        if product is None:
            raise ProductNotFound(
                f"No product {item.product_id}.",
                errors=[field_error(f"items.{index}.product_id", "unknown product", "not_found")],
            )
        if product.stock < item.quantity:
            raise InsufficientStock(
                f"Product {item.product_id} has {product.stock} in stock; {item.quantity} were asked for.",
                errors=[
                    field_error(f"items.{index}.quantity", "not enough in stock", "stock", available=product.stock)
                ],
            )
        lines.append(
            StockCheckLine(
                product_id=product.id,
                quantity=item.quantity,
                available=product.stock,
                unit_price_cents=product.price_cents,
            )
        )
    return StockCheckOut(items=lines, total_cents=sum(line.quantity * line.unit_price_cents for line in lines))


async def get_reservation(repo: InventoryRepository, tenant_id: str, reservation_id: str) -> Reservation:
    return await repo.one(Reservation, tenant_id, reservation_id, ReservationNotFound)


async def list_reservations(
    repo: InventoryRepository,
    tenant_id: str,
    page: PageQuery,
    *,
    order_id: str | None,
    status: str | None,
    user_id: str | None = None,
    open_only: bool = False,
) -> Page[ReservationOut]:
    """Newest first. `open_only`: only what still holds stock for an order (not released)."""
    where = matching((Reservation.order_id, order_id), (Reservation.status, status), (Reservation.user_id, user_id))
    if open_only:
        where.append(Reservation.status.in_(OPEN_RESERVATION))
    return await repo.list_page(
        Reservation, tenant_id, page.position(), page.limit, ReservationOut.model_validate, *where
    )


async def confirm(repo: InventoryRepository, tenant_id: str, reservation_id: str) -> Reservation:
    """Marks the reservation as belonging to a stored order. Confirming twice is harmless."""
    reservation = await get_reservation(repo, tenant_id, reservation_id)
    reserved = (ReservationState.RESERVED,)
    if await repo.move_reservation(tenant_id, reservation.id, reserved, ReservationState.CONFIRMED, utcnow()):
        return await get_reservation(repo, tenant_id, reservation_id)
    reservation = await get_reservation(repo, tenant_id, reservation_id)
    if reservation.status == ReservationState.RELEASED:
        raise ReservationReleased(f"Reservation {reservation_id} was released and cannot be confirmed.")
    return reservation


async def _release(repo: InventoryRepository, tenant_id: str, reservation: Reservation) -> Reservation:
    if await repo.move_reservation(tenant_id, reservation.id, OPEN_RESERVATION, ReservationState.RELEASED, utcnow()):
        # Only the caller that moved the status returns the stock: a second release finds it released.
        for item in sorted(reservation.items, key=lambda i: i.product_id):
            left_over = await repo.return_stock(tenant_id, item.product_id, item.quantity, MAX_STOCK)
            if left_over:
                await _write_off(repo, tenant_id, item.product_id, left_over, reservation.order_id)
    return await get_reservation(repo, tenant_id, reservation.id)


async def _write_off(repo: InventoryRepository, tenant_id: str, product_id: str, units: int, order_id: str) -> None:
    """Released units that would take the stock past its maximum: the stock stays at the maximum (the
    release must still succeed: the order is already cancelled), and the units that did not fit are
    written off as an adjustment, so the product's history says where they went."""
    logger.warning(
        "release of order %s: %d units of product %s above the maximum stock written off", order_id, units, product_id
    )
    adjustment = StockAdjustment(
        id=new_id(),
        tenant_id=tenant_id,
        product_id=product_id,
        delta=-units,
        reason=f"release of order {order_id} above the maximum stock",
        stock_after=MAX_STOCK,
        created_at=utcnow(),
    )
    await repo.add(adjustment)


async def release(repo: InventoryRepository, tenant_id: str, reservation_id: str) -> Reservation:
    """Returns the reserved stock, once, however often it is called."""
    return await _release(repo, tenant_id, await get_reservation(repo, tenant_id, reservation_id))


async def release_order(repo: InventoryRepository, tenant_id: str, order_id: str) -> Reservation:
    """Releases whatever the order holds, even when the caller never learnt whether its reserve call
    succeeded. With no reservation yet, a `released` marker is stored, so a reserve call for the
    order that is still on its way is refused instead of taking stock nobody will release."""
    existing = await repo.get_reservation_for_order(tenant_id, order_id)
    if existing is None:
        marker = Reservation.new(tenant_id, order_id=order_id, status=ReservationState.RELEASED, items=[])
        if await repo.claim_order(marker):
            return marker
        # The reserve call committed meanwhile: release what it took.
        existing = await repo.get_reservation_for_order(tenant_id, order_id)
        if existing is None:  # pragma: no cover - the row that conflicted cannot vanish: none is deleted
            raise ReservationNotFound(f"No reservation for order {order_id}.")
    return await _release(repo, tenant_id, existing)
