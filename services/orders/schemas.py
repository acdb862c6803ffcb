from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from shared.contract import LineItems, ReservedLine

OrderStatus = Literal["confirmed", "cancelled"]
# The order events, and those other services add to the feed (`shared.events.PUBLISHED_EVENT_TYPES`).
EventType = Literal["order.created", "order.cancelled", "quota.threshold_reached"]


class OrderCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"items": [{"product_id": "0b9d6c2e-5d7c-4a5e-9a4b-2f1e8c3d7a61", "quantity": 2}]}]
        },
    )

    items: LineItems


class OrderItemOut(ReservedLine):
    line_total_cents: int


class StatusChangeOut(BaseModel):
    status: OrderStatus
    at: datetime


class OrderOut(BaseModel):
    id: str
    status: OrderStatus
    items: list[OrderItemOut]
    total_cents: int
    user_id: str
    tenant_id: str
    reservation_id: str
    status_history: list[StatusChangeOut]
    created_at: datetime
    updated_at: datetime


class CreditOut(BaseModel):
    """A user's credit: open (not cancelled) orders may add up to `credit_limit_cents`."""

    user_id: str
    credit_limit_cents: int
    open_cents: int
    available_cents: int


class EventOut(BaseModel):
    seq: int
    id: str
    type: EventType
    tenant_id: str
    created_at: datetime
    data: dict[str, Any]
    # The W3C trace context of the request that wrote it, for consumers to continue; never public.
    traceparent: str | None = None


class EventFeed(BaseModel):
    items: list[EventOut]
    next_after: int
    # Every event with a seq up to this was removed by the retention (0: none ever was): a reader
    # resuming from before it has missed events.
    pruned_through: int = 0


class ReservationIn(BaseModel):
    """A reservation as the inventory service answers it (fields it adds are ignored)."""

    id: str
    order_id: str
    status: str
    items: list[ReservedLine]
