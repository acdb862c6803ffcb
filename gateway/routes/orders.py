"""Orders: forwarded to the orders service, which reserves stock with the inventory service."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query

from gateway.edge.access import readers_and_writers
from gateway.routes.forward import PAGE_QUERY, Forward, ForwardRouter
from services.orders.errors import OrderAlreadyCancelled, OrderNotFound, ProductNotFound, StockConflict, UnknownUser
from services.orders.schemas import OrderCreate, OrderOut
from shared.contract import RESOURCE_ID_PATTERN, CreditLimitExceeded
from shared.pagination import Page

router = ForwardRouter("orders", prefix="/v1", tags=["orders"])

Reader, Writer = readers_and_writers("orders")
LIST_QUERY = {
    "status": (Literal["confirmed", "cancelled"] | None, None),
    "user_id": (Annotated[str | None, Query(pattern=RESOURCE_ID_PATTERN)], None),
    **PAGE_QUERY,
}

router.add(
    Forward(
        "POST",
        "/orders",
        Writer,
        "create_order",
        "Place an order: reserves every item's stock or none, and emits order.created",
        status_code=201,
        body=OrderCreate,
        answer=OrderOut,
        errors=[ProductNotFound, StockConflict, UnknownUser, CreditLimitExceeded],
    ),
    Forward(
        "GET",
        "/orders",
        Reader,
        "list_orders",
        "The tenant's orders, newest first",
        query=LIST_QUERY,
        answer=Page[OrderOut],
    ),
    Forward(
        "GET",
        "/orders/{order_id}",
        Reader,
        "get_order",
        "An order of the tenant, with its items and status history",
        answer=OrderOut,
        errors=[OrderNotFound],
    ),
    Forward(
        "POST",
        "/orders/{order_id}/cancel",
        Writer,
        "cancel_order",
        "Cancel an order: releases its stock and emits order.cancelled",
        answer=OrderOut,
        errors=[OrderNotFound, OrderAlreadyCancelled],
    ),
)
