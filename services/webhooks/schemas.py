from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.schemas import refuse_null

EventType = Literal["order.created", "order.cancelled"]
EVENT_TYPES: tuple[str, ...] = ("order.created", "order.cancelled")
NOT_NULL = refuse_null("must not be null; leave the field out to keep it")


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

    url: Annotated[str | None, NOT_NULL] = Field(default=None, min_length=1, max_length=2048)
    events: list[EventType] | None = Field(default=None, min_length=1, max_length=len(EVENT_TYPES) * 4)
    enabled: Annotated[bool | None, NOT_NULL] = None

    @field_validator("events")
    @classmethod
    def _events(cls, events: list[EventType] | None) -> list[EventType] | None:
        return _distinct_sorted(events) if events is not None else None


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
