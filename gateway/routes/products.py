"""Products and their stock: proxied to the inventory service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from gateway.auth import RequireScope
from gateway.proxy import ResourceId, UpstreamsDep
from shared.contract import Identity

router = APIRouter(prefix="/v1", tags=["products"])

Reader = Annotated[Identity, Depends(RequireScope("products:read"))]
Writer = Annotated[Identity, Depends(RequireScope("products:write"))]
# Declared here for the API reference; the inventory service validates them again.
LimitQuery = Annotated[int, Query(ge=1, le=200, description="Items per page (default 50, at most 200).")]
CursorQuery = Annotated[str | None, Query(max_length=512, description="The `next_cursor` of the previous page.")]


@router.get("/products", summary="The tenant's products, newest first")
async def list_products(
    request: Request, upstreams: UpstreamsDep, identity: Reader, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> Response:
    return await upstreams.forward(request, "inventory", "/products", identity)


@router.post("/products", status_code=201, summary="Create a product (sku unique per tenant, price in cents)")
async def create_product(request: Request, upstreams: UpstreamsDep, identity: Writer) -> Response:
    return await upstreams.forward(request, "inventory", "/products", identity)


@router.get("/products/{product_id}", summary="A product of the tenant")
async def get_product(product_id: ResourceId, request: Request, upstreams: UpstreamsDep, identity: Reader) -> Response:
    return await upstreams.forward(request, "inventory", f"/products/{product_id}", identity)


@router.patch("/products/{product_id}", summary="Change a product's sku, name or price")
async def update_product(
    product_id: ResourceId, request: Request, upstreams: UpstreamsDep, identity: Writer
) -> Response:
    return await upstreams.forward(request, "inventory", f"/products/{product_id}", identity)


@router.post(
    "/products/{product_id}/stock-adjustments",
    status_code=201,
    summary="Add or remove stock (a non-zero delta and a reason); stock never goes below zero",
)
async def adjust_stock(product_id: ResourceId, request: Request, upstreams: UpstreamsDep, identity: Writer) -> Response:
    return await upstreams.forward(request, "inventory", f"/products/{product_id}/stock-adjustments", identity)


@router.get("/products/{product_id}/stock-adjustments", summary="A product's stock adjustments, newest first")
async def list_adjustments(
    product_id: ResourceId,
    request: Request,
    upstreams: UpstreamsDep,
    identity: Reader,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Response:
    return await upstreams.forward(request, "inventory", f"/products/{product_id}/stock-adjustments", identity)
