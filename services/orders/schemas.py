from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.config import JsonDict

from shared.contract import LineItems, ReservedLine
from shared.events import FeedEventType
from shared.schemas import with_examples

# The example of an order in the reference (ids as the other services' examples use them).
EXAMPLE_ORDER: JsonDict = {
    "id": "5b2e6f0a-3c1d-4e8f-9a7b-6c5d4e3f2a1b",
    "status": "confirmed",
    "items": [
        {
            "product_id": "0b9d6c2e-5d7c-4a5e-9a4b-2f1e8c3d7a61",
            "sku": "TSHIRT-BLUE-M",
            "name": "T-shirt, blue, M",
            "quantity": 2,
            "unit_price_cents": 1999,
            "line_total_cents": 3998,
        }
    ],
    "total_cents": 3998,
    "user_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
    "tenant_id": "b7e3c1d2-4f5a-4e6b-9c8d-7a6b5c4d3e2f",
    "reservation_id": "c4d5e6f7-a8b9-4c0d-8e1f-2a3b4c5d6e7f",
    "status_history": [{"status": "confirmed", "at": "2026-01-31T10:15:00Z"}],
    "created_at": "2026-01-31T10:15:00Z",
    "updated_at": "2026-01-31T10:15:00Z",
}
OrderStatus = Literal["confirmed", "cancelled"]
# The order events, and those other services add to the feed (`shared.events.PUBLISHED_EVENT_TYPES`).
EventType = FeedEventType


class OrderCreate(BaseModel):
    model_config = with_examples(
        {"items": [{"product_id": "0b9d6c2e-5d7c-4a5e-9a4b-2f1e8c3d7a61", "quantity": 2}]}, extra="forbid"
    )

    items: LineItems


class OrderItemOut(ReservedLine):
    line_total_cents: int


class StatusChangeOut(BaseModel):
    status: OrderStatus
    at: datetime


class OrderOut(BaseModel):
    model_config = with_examples(EXAMPLE_ORDER)

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
