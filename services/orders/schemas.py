from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from shared.contract import LineItems

OrderStatus = Literal["confirmed", "cancelled"]
EventType = Literal["order.created", "order.cancelled"]


class OrderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: LineItems


class OrderItemOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    product_id: str
    sku: str
    name: str
    quantity: int
    unit_price_cents: int
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


class EventOut(BaseModel):
    seq: int
    id: str
    type: EventType
    tenant_id: str
    created_at: datetime
    data: dict[str, Any]


class EventFeed(BaseModel):
    items: list[EventOut]
    next_after: int


class ReservedItem(BaseModel):
    """An item as the inventory service reserved it (with the price it read while taking the stock)."""

    model_config = ConfigDict(extra="ignore")

    product_id: str
    sku: str
    name: str
    quantity: int
    unit_price_cents: int


class ReservationIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    order_id: str
    status: str
    items: list[ReservedItem]
