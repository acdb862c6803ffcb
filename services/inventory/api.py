"""Routes of the inventory service. The gateway reaches the product routes; the orders service reaches
the reservation routes. Every route needs an internal identity with a tenant and its scope (the
dependencies of `deps.py`); each handler is one call of `service.py`."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from services.inventory import errors, service
from services.inventory.deps import ProductsRead, ProductsWrite, RepoDep, ReservationsRead, ReservationsWrite
from services.inventory.schemas import (
    ProductCreate,
    ProductOut,
    ProductUpdate,
    ReservationCreate,
    ReservationOut,
    ReservationStatus,
    StockAdjustmentCreate,
    StockAdjustmentOut,
    StockCheck,
    StockCheckOut,
)
from shared.contract import RESOURCE_ID_PATTERN, ResourceIdPath
from shared.errors import ValidationFailed
from shared.pagination import Page, PageDep
from shared.problem_docs import route_responses

router = APIRouter()

MAX_BATCH_IDS = 100


async def product_ids(
    ids: Annotated[
        str | None,
        Query(
            description=f"Comma-separated product ids: only these, in this order (up to {MAX_BATCH_IDS}).",
            max_length=MAX_BATCH_IDS * 65,
        ),
    ] = None,
) -> list[str] | None:
    """The batch read's ids; ids that are no product of the tenant are left out of the answer."""
    if ids is None:
        return None
    parsed = [part.strip() for part in ids.split(",")]
    if not 1 <= len(parsed) <= MAX_BATCH_IDS or not all(re.fullmatch(RESOURCE_ID_PATTERN, i) for i in parsed):
        raise ValidationFailed(
            f"ids must be 1 to {MAX_BATCH_IDS} product ids, comma-separated.",
            errors=[{"loc": ["query", "ids"], "field": "ids", "msg": "not a list of ids", "type": "value_error"}],
        )
    return parsed


ProductIdsQuery = Annotated[list[str] | None, Depends(product_ids)]


@router.post("/products", status_code=201, responses=route_responses(errors.CREATE_PRODUCT_ERRORS))
async def create_product(data: ProductCreate, repo: RepoDep, caller: ProductsWrite) -> ProductOut:
    return ProductOut.model_validate(await service.create_product(repo, caller.tenant_id, data))


@router.get("/products", responses=route_responses(errors.LIST_PRODUCTS_ERRORS))
async def list_products(
    repo: RepoDep, caller: ProductsRead, page: PageDep, ids: ProductIdsQuery = None
) -> Page[ProductOut]:
    return await service.list_products(repo, caller.tenant_id, page, ids)


@router.get("/products/{product_id}", responses=route_responses(errors.GET_PRODUCT_ERRORS))
async def get_product(product_id: ResourceIdPath, repo: RepoDep, caller: ProductsRead) -> ProductOut:
    return ProductOut.model_validate(await service.get_product(repo, caller.tenant_id, product_id))


@router.patch("/products/{product_id}", responses=route_responses(errors.UPDATE_PRODUCT_ERRORS))
async def update_product(
    product_id: ResourceIdPath, data: ProductUpdate, repo: RepoDep, caller: ProductsWrite
) -> ProductOut:
    return ProductOut.model_validate(await service.update_product(repo, caller.tenant_id, product_id, data))


@router.post(
    "/products/{product_id}/stock-adjustments", status_code=201, responses=route_responses(errors.ADJUST_STOCK_ERRORS)
)
async def adjust_stock(
    product_id: ResourceIdPath, data: StockAdjustmentCreate, repo: RepoDep, caller: ProductsWrite
) -> StockAdjustmentOut:
    return StockAdjustmentOut.model_validate(await service.adjust_stock(repo, caller.tenant_id, product_id, data))


@router.get("/products/{product_id}/stock-adjustments", responses=route_responses(errors.LIST_ADJUSTMENTS_ERRORS))
async def list_adjustments(
    product_id: ResourceIdPath, repo: RepoDep, caller: ProductsRead, page: PageDep
) -> Page[StockAdjustmentOut]:
    return await service.list_adjustments(repo, caller.tenant_id, product_id, page)


# Reservations: called by the orders service for the caller who places or cancels an order.


@router.post(
    "/reservations",
    status_code=201,
    responses={
        200: {"description": "The order already holds this reservation."},
        **route_responses(errors.RESERVE_ERRORS),
    },
)
async def reserve(
    data: ReservationCreate, response: Response, repo: RepoDep, caller: ReservationsWrite
) -> ReservationOut:
    reservation, created = await service.reserve(repo, caller.tenant_id, data)
    if not created:
        response.status_code = 200
    return ReservationOut.model_validate(reservation)


@router.get("/reservations", responses=route_responses(errors.LIST_RESERVATIONS_ERRORS))
async def list_reservations(
    repo: RepoDep,
    caller: ReservationsRead,
    page: PageDep,
    order_id: Annotated[str | None, Query(pattern=RESOURCE_ID_PATTERN)] = None,
    status: ReservationStatus | None = None,
    user_id: Annotated[str | None, Query(pattern=RESOURCE_ID_PATTERN)] = None,
    open_only: Annotated[
        bool, Query(alias="open", description="Only reservations still holding stock (not released).")
    ] = False,
) -> Page[ReservationOut]:
    return await service.list_reservations(
        repo, caller.tenant_id, page, order_id=order_id, status=status, user_id=user_id, open_only=open_only
    )


@router.post("/stock-checks", responses=route_responses(errors.CHECK_STOCK_ERRORS))
async def check_stock(data: StockCheck, repo: RepoDep, caller: ReservationsWrite) -> StockCheckOut:
    """Whether an order's lines are in stock now, and their prices; nothing is reserved."""
    return await service.check_stock(repo, caller.tenant_id, data)


@router.get("/reservations/{reservation_id}", responses=route_responses(errors.GET_RESERVATION_ERRORS))
async def get_reservation(reservation_id: ResourceIdPath, repo: RepoDep, caller: ReservationsRead) -> ReservationOut:
    return ReservationOut.model_validate(await service.get_reservation(repo, caller.tenant_id, reservation_id))


@router.post("/reservations/{reservation_id}/confirm", responses=route_responses(errors.CONFIRM_RESERVATION_ERRORS))
async def confirm_reservation(
    reservation_id: ResourceIdPath, repo: RepoDep, caller: ReservationsWrite
) -> ReservationOut:
    return ReservationOut.model_validate(await service.confirm(repo, caller.tenant_id, reservation_id))


@router.post("/reservations/{reservation_id}/release", responses=route_responses(errors.RELEASE_RESERVATION_ERRORS))
async def release_reservation(
    reservation_id: ResourceIdPath, repo: RepoDep, caller: ReservationsWrite
) -> ReservationOut:
    return ReservationOut.model_validate(await service.release(repo, caller.tenant_id, reservation_id))


@router.post(
    "/orders/{order_id}/reservation/release", responses=route_responses(errors.RELEASE_ORDER_RESERVATION_ERRORS)
)
async def release_order_reservation(
    order_id: ResourceIdPath, repo: RepoDep, caller: ReservationsWrite
) -> ReservationOut:
    """Releases whatever an order holds; with nothing yet, refuses any later reserve for the order."""
    return ReservationOut.model_validate(await service.release_order(repo, caller.tenant_id, order_id))
