"""Routes of the orders service. The gateway reaches the order routes; the webhooks relay reads the
event feed. Every route needs an internal identity, and who may call it is its dependency (`deps.py`);
each handler is one call of `service.py`, which opens its own transactions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from starlette.responses import Response

from services.orders import service
from services.orders.deps import ContextDep, EventsPublisher, EventsReader, OrdersRead, OrdersWrite
from services.orders.errors import (
    CANCEL_ORDER_ERRORS,
    CREATE_ORDER_ERRORS,
    GET_ORDER_ERRORS,
    LIST_ORDERS_ERRORS,
    PUBLISH_EVENT_ERRORS,
    READ_EVENTS_ERRORS,
)
from services.orders.schemas import CreditOut, EventFeed, OrderCreate, OrderOut, OrderStatus
from shared.contract import (
    IDEMPOTENT_REPLAYED_HEADER,
    RESOURCE_ID_PATTERN,
    InsufficientScope,
    InvalidIdempotencyKey,
    ResourceIdPath,
    checked_idempotency_key,
)
from shared.errors import UpstreamBadResponse
from shared.events import FEED_DEFAULT_LIMIT, FEED_MAX_LIMIT, FEED_PATH, PublishedEvent
from shared.pagination import Page, PageDep
from shared.problem_docs import problem_responses, route_responses

router = APIRouter()

JSON = "application/json"


@router.post(
    "/orders",
    status_code=201,
    response_model=OrderOut,
    # Besides the row's: a key the gateway would have refused, and the inventory service misbehaving.
    responses=route_responses([InvalidIdempotencyKey, UpstreamBadResponse, *CREATE_ORDER_ERRORS]),
)
async def create_order(
    data: OrderCreate,
    ctx: ContextDep,
    caller: OrdersWrite,
    idempotency_key: Annotated[
        str | None,
        Header(
            description="Repeating a request with the same key answers the first order instead of placing another "
            "(1 to 255 visible ASCII characters; the key is the caller's own).",
        ),
    ] = None,
) -> Response:
    key = checked_idempotency_key(idempotency_key)
    placed = await service.create_order(ctx, caller, data, key)
    # The stored bytes themselves, so a replay is exactly the first answer.
    headers = {IDEMPOTENT_REPLAYED_HEADER: "true"} if placed.replayed else {}
    return Response(placed.body, status_code=201, media_type=JSON, headers=headers)


@router.get("/orders", responses=route_responses(LIST_ORDERS_ERRORS))
async def list_orders(
    ctx: ContextDep,
    caller: OrdersRead,
    page: PageDep,
    status: OrderStatus | None = None,
    user_id: Annotated[str | None, Query(pattern=RESOURCE_ID_PATTERN)] = None,
) -> Page[OrderOut]:
    return await service.list_orders(ctx, caller.tenant_id, page, status=status, user_id=user_id)


@router.get("/credit", responses=problem_responses([InsufficientScope]))
async def credit(ctx: ContextDep, caller: OrdersWrite) -> CreditOut:
    """The caller's credit limit and what their open orders use of it (for checking an order first)."""
    return await service.credit(ctx, caller)


@router.get("/orders/{order_id}", responses=route_responses(GET_ORDER_ERRORS))
async def get_order(order_id: ResourceIdPath, ctx: ContextDep, caller: OrdersRead) -> OrderOut:
    return await service.get_order(ctx, caller.tenant_id, order_id)


@router.post("/orders/{order_id}/cancel", responses=route_responses(CANCEL_ORDER_ERRORS))
async def cancel_order(order_id: ResourceIdPath, ctx: ContextDep, caller: OrdersWrite) -> OrderOut:
    return await service.cancel_order(ctx, caller, order_id)


@router.get(FEED_PATH, responses=route_responses(READ_EVENTS_ERRORS))
async def events(
    ctx: ContextDep,
    _: EventsReader,
    # The seq column is a 64-bit integer.
    after: Annotated[int, Query(ge=0, le=2**63 - 1, description="The last seq already consumed.")] = 0,
    limit: Annotated[int, Query(ge=1, le=FEED_MAX_LIMIT)] = FEED_DEFAULT_LIMIT,
    tenant_id: Annotated[
        str | None, Query(pattern=RESOURCE_ID_PATTERN, description="Only this tenant's events (resuming a stream).")
    ] = None,
) -> EventFeed:
    """Order events in seq order (every tenant's, or one tenant's), for other Portico services: the
    webhooks relay, and the gateway's real-time relay and stream resumption."""
    return await service.event_feed(ctx, after, limit, tenant_id)


@router.post(
    FEED_PATH,
    status_code=202,
    responses=route_responses(PUBLISH_EVENT_ERRORS),
)
async def publish_event(ctx: ContextDep, _: EventsPublisher, event: PublishedEvent) -> Response:
    """Adds another service's event to the feed (the gateway's `quota.threshold_reached`), once: an
    event whose id is already there is not added again. 202 either way."""
    await service.publish_event(ctx, event)
    return Response(status_code=202)
