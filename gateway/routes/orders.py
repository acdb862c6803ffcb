"""Orders: forwarded to the orders service, which reserves stock with the inventory service."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query

from gateway.edge.access import Access
from gateway.routes.forward import PAGE_QUERY, Forward, ForwardRouter
from services.orders.errors import CANCEL_ORDER_ERRORS, CREATE_ORDER_ERRORS, GET_ORDER_ERRORS, LIST_ORDERS_ERRORS
from services.orders.schemas import OrderCreate, OrderOut
from shared.contract import ORDERS_READ, ORDERS_WRITE, RESOURCE_ID_PATTERN
from shared.pagination import Page

router = ForwardRouter("orders", prefix="/v1", tags=["orders"])

Reader, Writer = Access(scope=ORDERS_READ), Access(scope=ORDERS_WRITE)
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
        errors=CREATE_ORDER_ERRORS,
        description=(
            "Places an order for the calling user. Every line's stock is reserved in the inventory service "
            "or none is (409 `INSUFFICIENT_STOCK` names the line and what is `available`; 404 "
            "`PRODUCT_NOT_FOUND` the unknown product), and the user's open orders plus this one must stay "
            "within their credit limit (422 `CREDIT_LIMIT_EXCEEDED`). The order is `confirmed` at once and "
            "an `order.created` event goes to webhooks and the event stream.\n\n"
            "Send an `Idempotency-Key` to retry safely: a repeat gets the first answer "
            "(`Idempotent-Replayed: true`) and never places a second order."
        ),
    ),
    Forward(
        "GET",
        "/orders",
        Reader,
        "list_orders",
        "The tenant's orders, newest first",
        query=LIST_QUERY,
        answer=Page[OrderOut],
        errors=LIST_ORDERS_ERRORS,
        description=(
            "The tenant's orders, newest first, a page at a time: pass the answer's `next_cursor` as `cursor` "
            "for the next page (null on the last). Filter by `status` or by `user_id`."
        ),
    ),
    Forward(
        "GET",
        "/orders/{order_id}",
        Reader,
        "get_order",
        "An order of the tenant, with its items and status history",
        answer=OrderOut,
        errors=GET_ORDER_ERRORS,
        description=(
            "One order of the caller's tenant: its lines with the prices read when it was placed, its total "
            "and every status it went through. An order of another tenant is 404, as one that does not exist."
        ),
    ),
    Forward(
        "POST",
        "/orders/{order_id}/cancel",
        Writer,
        "cancel_order",
        "Cancel an order: releases its stock and emits order.cancelled",
        answer=OrderOut,
        errors=CANCEL_ORDER_ERRORS,
        description=(
            "Cancels a confirmed order: its reserved stock goes back to the products, it no longer counts "
            "against the user's credit, and an `order.cancelled` event is sent. Cancelling it twice is 409 "
            "`ORDER_ALREADY_CANCELLED`."
        ),
    ),
)
