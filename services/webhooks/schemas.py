from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

EventType = Literal["order.created", "order.cancelled"]
EVENT_TYPES: tuple[str, ...] = ("order.created", "order.cancelled")


def _distinct_sorted(events: list[EventType]) -> list[EventType]:
    return sorted(set(events))


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, examples=["https://hooks.example.com/portico"])
    events: list[EventType] = Field(min_length=1, max_length=len(EVENT_TYPES) * 4)
    enabled: bool = True

    @field_validator("events")
    @classmethod
    def _events(cls, events: list[EventType]) -> list[EventType]:
        return _distinct_sorted(events)


class EndpointUpdate(BaseModel):
    """Only the fields sent change."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=1, max_length=2048)
    events: list[EventType] | None = Field(default=None, min_length=1, max_length=len(EVENT_TYPES) * 4)
    enabled: bool | None = None

    @field_validator("events")
    @classmethod
    def _events(cls, events: list[EventType] | None) -> list[EventType] | None:
        return _distinct_sorted(events) if events is not None else None

    @field_validator("url", "enabled", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Leaving a field out keeps it; sending null cannot unset a required field.
        if value is None:
            raise ValueError("must not be null; leave the field out to keep it")
        return value


class EndpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    url: str
    events: list[str]
    enabled: bool
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(EndpointOut):
    """Only the answers to create and rotate carry the secret."""

    secret: str
    # Until then, deliveries are also signed with the secret that was rotated out.
    previous_secret_expires_at: datetime | None = None


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    created_at: datetime


class FeedEvent(BaseModel):
    """One event of the orders service's feed (`GET /events`)."""

    seq: int = Field(ge=1)
    id: str = Field(min_length=1, max_length=36)
    # Kept open: a type the registry does not offer yet is stored and simply matches no endpoint.
    type: str = Field(min_length=1, max_length=100)
    tenant_id: str = Field(min_length=1, max_length=64)
    created_at: datetime
    data: dict[str, Any]

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must carry a UTC offset")
        return value


class FeedPage(BaseModel):
    items: list[FeedEvent]
    next_after: int = Field(ge=0)
