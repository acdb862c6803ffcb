"""Orders: proxied to the orders service, which reserves stock with the inventory service."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from gateway.auth import RequireScope
from gateway.proxy import ResourceId, UpstreamsDep
from shared.contract import RESOURCE_ID_PATTERN, Identity

router = APIRouter(prefix="/v1", tags=["orders"])

Reader = Annotated[Identity, Depends(RequireScope("orders:read"))]
Writer = Annotated[Identity, Depends(RequireScope("orders:write"))]
# Declared here for the API reference; the orders service validates them again.
LimitQuery = Annotated[int, Query(ge=1, le=200, description="Items per page (default 50, at most 200).")]
CursorQuery = Annotated[str | None, Query(max_length=512, description="The `next_cursor` of the previous page.")]


@router.post(
    "/orders",
    status_code=201,
    summary="Place an order: reserves every item's stock or none, and emits order.created",
)
async def create_order(request: Request, upstreams: UpstreamsDep, identity: Writer) -> Response:
    return await upstreams.forward(request, "orders", "/orders", identity)


@router.get("/orders", summary="The tenant's orders, newest first")
async def list_orders(
    request: Request,
    upstreams: UpstreamsDep,
    identity: Reader,
    status: Literal["confirmed", "cancelled"] | None = None,
    user_id: Annotated[str | None, Query(pattern=RESOURCE_ID_PATTERN)] = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Response:
    return await upstreams.forward(request, "orders", "/orders", identity)


@router.get("/orders/{order_id}", summary="An order of the tenant, with its items and status history")
async def get_order(order_id: ResourceId, request: Request, upstreams: UpstreamsDep, identity: Reader) -> Response:
    return await upstreams.forward(request, "orders", f"/orders/{order_id}", identity)


@router.post("/orders/{order_id}/cancel", summary="Cancel an order: releases its stock and emits order.cancelled")
async def cancel_order(order_id: ResourceId, request: Request, upstreams: UpstreamsDep, identity: Writer) -> Response:
    return await upstreams.forward(request, "orders", f"/orders/{order_id}/cancel", identity)
