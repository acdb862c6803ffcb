"""Routes of the orders service. The gateway reaches the order routes; the webhooks relay reads the
event feed. Every route needs an internal identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from starlette.responses import Response

from services.orders import service
from services.orders.repository import OrderRepository
from services.orders.schemas import (
    EventFeed,
    OrderCreate,
    OrderOut,
    OrderStatus,
)
from services.orders.service import OrdersContext
from shared.contract import IDEMPOTENCY_KEY_PATTERN, RESOURCE_ID_PATTERN
from shared.db import SessionDep
from shared.errors import (
    Conflict,
    DownstreamBadResponse,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    ValidationFailed,
)
from shared.identity import IdentityDep, TenantIdentityDep
from shared.pagination import DEFAULT_LIMIT, Cursor, CursorQuery, LimitQuery, Page, page_of

router = APIRouter()

JSON = "application/json"


async def get_repo(session: SessionDep) -> OrderRepository:
    return OrderRepository(session)


async def get_context(request: Request) -> OrdersContext:
    ctx: OrdersContext = request.state.orders
    return ctx


RepoDep = Annotated[OrderRepository, Depends(get_repo)]
PathId = Annotated[str, Path(pattern=RESOURCE_ID_PATTERN)]
ContextDep = Annotated[OrdersContext, Depends(get_context)]
NOT_FOUND = NotFound.openapi_response()
INVALID = ValidationFailed.openapi_response()
CONFLICT = Conflict.openapi_response()


@router.post(
    "/orders",
    status_code=201,
    response_model=OrderOut,
    responses={
        **INVALID,
        **NOT_FOUND,
        **CONFLICT,
        **Forbidden.openapi_response(),
        **DownstreamBadResponse.openapi_response(),
    },
)
async def create_order(
    data: OrderCreate,
    ctx: ContextDep,
    identity: TenantIdentityDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="Repeating a request with the same key answers the first order instead of placing another.",
        ),
    ] = None,
) -> Response:
    identity.require_scope("orders:write")
    placed = await service.create_order(ctx, identity, data, idempotency_key)
    # The stored bytes themselves, so a replay is exactly the first answer.
    headers = {"Idempotent-Replayed": "true"} if placed.replayed else {}
    return Response(placed.body, status_code=201, media_type=JSON, headers=headers)


@router.get("/orders", response_model=Page[OrderOut], responses=INVALID)
async def list_orders(
    repo: RepoDep,
    identity: TenantIdentityDep,
    status: OrderStatus | None = None,
    user_id: Annotated[str | None, Query(pattern=RESOURCE_ID_PATTERN)] = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[OrderOut]:
    identity.require_scope("orders:read")
    rows = await repo.list_orders(
        identity.require_tenant(), limit, Cursor.decode(cursor), status=status, user_id=user_id
    )
    return page_of(rows, limit, service.order_out)


@router.get("/orders/{order_id}", response_model=OrderOut, responses=NOT_FOUND)
async def get_order(order_id: PathId, repo: RepoDep, identity: TenantIdentityDep) -> OrderOut:
    identity.require_scope("orders:read")
    return service.order_out(await service.get_order(repo, identity.require_tenant(), order_id))


@router.post("/orders/{order_id}/cancel", response_model=OrderOut, responses={**NOT_FOUND, **CONFLICT})
async def cancel_order(order_id: PathId, ctx: ContextDep, identity: TenantIdentityDep) -> OrderOut:
    identity.require_scope("orders:write")
    return await service.cancel_order(ctx, identity, order_id)


@router.get(
    "/events",
    response_model=EventFeed,
    responses={**Forbidden.openapi_response(), **ServiceUnavailable.openapi_response()},
)
async def events(
    repo: RepoDep,
    ctx: ContextDep,
    identity: IdentityDep,
    # The seq column is a 64-bit integer.
    after: Annotated[int, Query(ge=0, le=2**63 - 1, description="The last seq already consumed.")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> EventFeed:
    """Every tenant's order events in seq order, for other Portico services (the webhooks relay)."""
    if not identity.subject.startswith("service:"):
        raise Forbidden("The event feed serves Portico services only.", error_code="SERVICE_ONLY")
    identity.require_scope("events:read")
    return await service.event_feed(repo, after, limit, ctx.settings.events_lock_timeout_ms)
