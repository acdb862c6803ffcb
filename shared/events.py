"""The order events feed as its readers see it: the orders service serves it (`GET /events`), the
webhooks relay and the gateway's real-time relay read it. What both sides agree on lives here.

An event's `seq` is its one id everywhere: in the feed, on `/v1/events` (SSE `id:`) and on `/v1/ws`
(`"id"`). It is the outbox's autoincrement key, so it grows with every event of every tenant and is
therefore monotonic per tenant (with gaps where other tenants' events fall).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, field_validator

from shared.telemetry import TRACEPARENT_PATTERN

# The most events one feed page holds, and how many it holds when the reader does not say.
FEED_MAX_LIMIT = 500
FEED_DEFAULT_LIMIT = 100
FEED_PATH = "/events"

# The events the orders service writes with each change to an order.
OrderEventType = Literal["order.created", "order.cancelled"]
ORDER_CREATED: OrderEventType = "order.created"
ORDER_CANCELLED: OrderEventType = "order.cancelled"
# Events the gateway itself originates and adds to the feed (`POST /events` on the orders service).
PublishedEventType = Literal["quota.threshold_reached"]
QUOTA_THRESHOLD_REACHED: PublishedEventType = "quota.threshold_reached"
PUBLISHED_EVENT_TYPES: tuple[str, ...] = get_args(PublishedEventType)
# Every type the feed holds.
FeedEventType = Literal[OrderEventType, PublishedEventType]


class FeedEvent(BaseModel):
    """One event of the orders service's feed (`GET /events`)."""

    seq: int = Field(ge=1)
    id: str = Field(min_length=1, max_length=36)
    # Kept open: a type a reader does not know yet is passed on (or stored) as it is.
    type: str = Field(min_length=1, max_length=100)
    tenant_id: str = Field(min_length=1, max_length=64)
    created_at: datetime
    data: dict[str, Any]
    # The W3C trace context of the request that wrote the event (absent from older feeds).
    traceparent: str | None = None

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must carry a UTC offset")
        return value

    @field_validator("traceparent", mode="before")
    @classmethod
    def _trace_or_nothing(cls, value: Any) -> Any:
        # Only a trace to continue: anything else is dropped rather than holding up the feed.
        return value if isinstance(value, str) and TRACEPARENT_PATTERN.match(value) else None

    def envelope(self) -> dict[str, Any]:
        """What tenants see of the event: the webhook body, `{"type", "timestamp", "data"}`."""
        timestamp = self.created_at.isoformat().replace("+00:00", "Z")
        return {"type": self.type, "timestamp": timestamp, "data": self.data}


class FeedPage(BaseModel):
    items: list[FeedEvent]
    next_after: int = Field(ge=0)
    # Every event up to this seq was removed by the feed's retention (0: none was).
    pruned_through: int = Field(default=0, ge=0)


class PublishedEvent(BaseModel):
    """An event another Portico service adds to the feed. `id` is chosen by the publisher and names
    the event for good: publishing it again (a retry, another gateway instance) adds nothing."""

    id: str = Field(min_length=1, max_length=36)
    type: str = Field(min_length=1, max_length=64)
    tenant_id: str = Field(min_length=1, max_length=36)
    data: dict[str, Any]

    @field_validator("type")
    @classmethod
    def _published(cls, value: str) -> str:
        if value not in PUBLISHED_EVENT_TYPES:
            raise ValueError(f"must be one of {', '.join(PUBLISHED_EVENT_TYPES)}")
        return value
