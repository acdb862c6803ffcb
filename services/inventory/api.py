"""Routes of the inventory service. The gateway reaches the product routes; the orders service reaches
the reservation routes. Every route needs an internal identity with a tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from services.inventory import service
from services.inventory.repository import InventoryRepository
from services.inventory.schemas import (
    ProductCreate,
    ProductOut,
    ProductUpdate,
    ReservationCreate,
    ReservationOut,
    ReservationStatus,
    StockAdjustmentCreate,
    StockAdjustmentOut,
)
from shared.contract import RESOURCE_ID_PATTERN
from shared.db import SessionDep
from shared.errors import Conflict, NotFound, ValidationFailed
from shared.identity import TenantIdentityDep
from shared.pagination import DEFAULT_LIMIT, Cursor, CursorQuery, LimitQuery, Page, page_of

router = APIRouter()


async def get_repo(session: SessionDep) -> InventoryRepository:
    return InventoryRepository(session)


RepoDep = Annotated[InventoryRepository, Depends(get_repo)]
PathId = Annotated[str, Path(pattern=RESOURCE_ID_PATTERN)]
NOT_FOUND = NotFound.openapi_response()
INVALID = ValidationFailed.openapi_response()
CONFLICT = Conflict.openapi_response()


@router.post("/products", status_code=201, response_model=ProductOut, responses={**INVALID, **CONFLICT})
async def create_product(data: ProductCreate, repo: RepoDep, identity: TenantIdentityDep) -> ProductOut:
    identity.require_scope("products:write")
    product = await service.create_product(repo, identity.require_tenant(), data)
    return ProductOut.model_validate(product)


@router.get("/products", response_model=Page[ProductOut], responses=INVALID)
async def list_products(
    repo: RepoDep, identity: TenantIdentityDep, limit: LimitQuery = DEFAULT_LIMIT, cursor: CursorQuery = None
) -> Page[ProductOut]:
    identity.require_scope("products:read")
    rows = await repo.list_products(identity.require_tenant(), limit, Cursor.decode(cursor))
    return page_of(rows, limit, ProductOut.model_validate)


@router.get("/products/{product_id}", response_model=ProductOut, responses=NOT_FOUND)
async def get_product(product_id: PathId, repo: RepoDep, identity: TenantIdentityDep) -> ProductOut:
    identity.require_scope("products:read")
    return ProductOut.model_validate(await service.get_product(repo, identity.require_tenant(), product_id))


@router.patch("/products/{product_id}", response_model=ProductOut, responses={**NOT_FOUND, **INVALID, **CONFLICT})
async def update_product(
    product_id: PathId, data: ProductUpdate, repo: RepoDep, identity: TenantIdentityDep
) -> ProductOut:
    identity.require_scope("products:write")
    product = await service.update_product(repo, identity.require_tenant(), product_id, data)
    return ProductOut.model_validate(product)


@router.post(
    "/products/{product_id}/stock-adjustments",
    status_code=201,
    response_model=StockAdjustmentOut,
    responses={**NOT_FOUND, **INVALID, **CONFLICT},
)
async def adjust_stock(
    product_id: PathId, data: StockAdjustmentCreate, repo: RepoDep, identity: TenantIdentityDep
) -> StockAdjustmentOut:
    identity.require_scope("products:write")
    adjustment = await service.adjust_stock(repo, identity.require_tenant(), product_id, data)
    return StockAdjustmentOut.model_validate(adjustment)


@router.get(
    "/products/{product_id}/stock-adjustments",
    response_model=Page[StockAdjustmentOut],
    responses={**NOT_FOUND, **INVALID},
)
async def list_adjustments(
    product_id: PathId,
    repo: RepoDep,
    identity: TenantIdentityDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[StockAdjustmentOut]:
    identity.require_scope("products:read")
    tenant_id = identity.require_tenant()
    position = Cursor.decode(cursor)
    await service.get_product(repo, tenant_id, product_id)
    rows = await repo.list_adjustments(tenant_id, product_id, limit, position)
    return page_of(rows, limit, StockAdjustmentOut.model_validate)


# Reservations: the orders service acts for the caller who places or cancels an order, so these
# need that caller's orders scopes.


@router.post(
    "/reservations",
    status_code=201,
    response_model=ReservationOut,
    responses={200: {"description": "The order already holds this reservation."}, **NOT_FOUND, **INVALID, **CONFLICT},
)
async def reserve(
    data: ReservationCreate, response: Response, repo: RepoDep, identity: TenantIdentityDep
) -> ReservationOut:
    identity.require_scope("orders:write")
    reservation, created = await service.reserve(repo, identity.require_tenant(), data)
    if not created:
        response.status_code = 200
    return ReservationOut.model_validate(reservation)


@router.get("/reservations", response_model=Page[ReservationOut], responses=INVALID)
async def list_reservations(
    repo: RepoDep,
    identity: TenantIdentityDep,
    order_id: Annotated[str | None, Query(pattern=RESOURCE_ID_PATTERN)] = None,
    status: ReservationStatus | None = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[ReservationOut]:
    identity.require_scope("orders:read")
    rows = await repo.list_reservations(
        identity.require_tenant(), limit, Cursor.decode(cursor), {"order_id": order_id, "status": status}
    )
    return page_of(rows, limit, ReservationOut.model_validate)


@router.get("/reservations/{reservation_id}", response_model=ReservationOut, responses=NOT_FOUND)
async def get_reservation(reservation_id: PathId, repo: RepoDep, identity: TenantIdentityDep) -> ReservationOut:
    identity.require_scope("orders:read")
    reservation = await service.get_reservation(repo, identity.require_tenant(), reservation_id)
    return ReservationOut.model_validate(reservation)


@router.post("/reservations/{reservation_id}/confirm", response_model=ReservationOut, responses=CONFLICT)
async def confirm_reservation(reservation_id: PathId, repo: RepoDep, identity: TenantIdentityDep) -> ReservationOut:
    identity.require_scope("orders:write")
    reservation = await service.confirm(repo, identity.require_tenant(), reservation_id)
    return ReservationOut.model_validate(reservation)


@router.post("/reservations/{reservation_id}/release", response_model=ReservationOut, responses=NOT_FOUND)
async def release_reservation(reservation_id: PathId, repo: RepoDep, identity: TenantIdentityDep) -> ReservationOut:
    identity.require_scope("orders:write")
    reservation = await service.release(repo, identity.require_tenant(), reservation_id)
    return ReservationOut.model_validate(reservation)


@router.post("/orders/{order_id}/reservation/release", response_model=ReservationOut)
async def release_order_reservation(order_id: PathId, repo: RepoDep, identity: TenantIdentityDep) -> ReservationOut:
    """Releases whatever an order holds; with nothing yet, refuses any later reserve for the order."""
    identity.require_scope("orders:write")
    reservation = await service.release_order(repo, identity.require_tenant(), order_id)
    return ReservationOut.model_validate(reservation)
