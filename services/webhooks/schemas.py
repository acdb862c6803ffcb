from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict

from shared.deprecation import WEBHOOK_ENDPOINT_ENABLED
from shared.events import OrderEventType, PublishedEventType
from shared.schemas import RequestDatetime, refuse_null, with_examples

# `endpoint.disabled` is this service's own: sent to a tenant's other endpoints when one is disabled
# for it (`{"endpoint_id", "reason": "gone" | "failing"}`). `quota.threshold_reached` is the gateway's, through
# the orders feed (`{"threshold": 80 | 100, "period_start", "limit", "used"}`).
EndpointEventType = Literal["endpoint.disabled"]
ENDPOINT_DISABLED: EndpointEventType = "endpoint.disabled"
EventType = Literal[OrderEventType, EndpointEventType, PublishedEventType]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
NOT_NULL = refuse_null("must not be null; leave the field out to keep it")
EndpointStatus = Literal["active", "disabled"]
# Attempts started per second at most, across every worker; null: no limit.
RateLimit = Annotated[int | None, Field(ge=1, le=10_000, examples=[20])]
DeliveryStatus = Literal["pending", "succeeded", "failed", "cancelled"]

# Examples of the reference (ids as the other services' examples use them).
EXAMPLE_ENDPOINT: JsonDict = {
    "id": "2a7c1e9b-8d4f-4b3a-9e6c-1f2d3c4b5a69",
    "url": "https://hooks.example.com/portico",
    "events": ["order.cancelled", "order.created"],
    "status": "active",
    "enabled": True,
    "rate_limit_per_second": 20,
    "created_at": "2026-01-31T12:00:00Z",
    "updated_at": "2026-01-31T12:00:00Z",
}
EXAMPLE_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw1lqdk9YnTWk="
EXAMPLE_DELIVERY: JsonDict = {
    "id": "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b",
    "endpoint_id": EXAMPLE_ENDPOINT["id"],
    "event_id": "3d4e5f60-7182-4a3b-9c4d-5e6f70819203",
    "event_type": "order.created",
    "webhook_id": "msg_9e8d7c6b5a4f4e3d8c2b1a0f9e8d7c6b",
    "status": "failed",
    "attempts": 2,
    "next_attempt_at": "2026-01-31T12:20:00Z",
    "last_attempt_at": "2026-01-31T12:15:05Z",
    "last_status_code": 503,
    "created_at": "2026-01-31T12:15:00Z",
}


def _status_or_enabled(status: EndpointStatus | None, enabled: bool | None) -> None:
    """`enabled` is the older shape of `status`; sent together they must agree."""
    if status is not None and enabled is not None and (status == "active") != enabled:
        raise ValueError("status and enabled disagree; send status alone (enabled is its older shape)")


def _distinct_sorted(events: list[EventType]) -> list[EventType]:
    return sorted(set(events))


class EndpointCreate(BaseModel):
    model_config = with_examples(
        {"url": "https://hooks.example.com/portico", "events": ["order.created", "order.cancelled"]}, extra="forbid"
    )

    url: str = Field(min_length=1, max_length=2048, examples=["https://hooks.example.com/portico"])
    events: list[EventType] = Field(min_length=1, max_length=len(EVENT_TYPES) * 4)
    status: EndpointStatus | None = None
    # The older shape of `status`.
    enabled: bool | None = WEBHOOK_ENDPOINT_ENABLED.field()
    rate_limit_per_second: RateLimit = None

    @field_validator("events")
    @classmethod
    def _events(cls, events: list[EventType]) -> list[EventType]:
        return _distinct_sorted(events)

    @model_validator(mode="after")
    def _agree(self) -> EndpointCreate:
        _status_or_enabled(self.status, self.enabled)
        return self

    @property
    def initial_status(self) -> EndpointStatus:
        if self.status is not None:
            return self.status
        return "disabled" if self.enabled is False else "active"


class EndpointUpdate(BaseModel):
    """Only the fields sent change."""

    model_config = with_examples({"status": "active", "rate_limit_per_second": 50}, extra="forbid")

    url: Annotated[str | None, NOT_NULL] = Field(default=None, min_length=1, max_length=2048)
    events: list[EventType] | None = Field(default=None, min_length=1, max_length=len(EVENT_TYPES) * 4)
    status: Annotated[EndpointStatus | None, NOT_NULL] = None
    # The older shape of `status`.
    enabled: Annotated[bool | None, NOT_NULL] = WEBHOOK_ENDPOINT_ENABLED.field()
    # Null lifts the limit; left out, it stays as it is.
    rate_limit_per_second: RateLimit = None

    @field_validator("events")
    @classmethod
    def _events(cls, events: list[EventType] | None) -> list[EventType] | None:
        return _distinct_sorted(events) if events is not None else None

    @model_validator(mode="after")
    def _agree(self) -> EndpointUpdate:
        _status_or_enabled(self.status, self.enabled)
        return self

    @property
    def new_status(self) -> EndpointStatus | None:
        if self.status is not None:
            return self.status
        if self.enabled is not None:
            return "active" if self.enabled else "disabled"
        return None

    @property
    def changes_rate_limit(self) -> bool:
        return "rate_limit_per_second" in self.model_fields_set


class EndpointOut(BaseModel):
    model_config = with_examples(EXAMPLE_ENDPOINT, from_attributes=True)

    id: str
    url: str
    events: list[str]
    status: EndpointStatus
    # The older shape of `status` (enabled is status == "active"), kept for existing clients.
    enabled: bool = WEBHOOK_ENDPOINT_ENABLED.field(...)
    rate_limit_per_second: int | None
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(EndpointOut):
    """Only the answers to create and rotate carry the secret."""

    model_config = with_examples({**EXAMPLE_ENDPOINT, "secret": EXAMPLE_SECRET, "previous_secret_expires_at": None})

    secret: str
    # Until then, deliveries are also signed with the secret that was rotated out.
    previous_secret_expires_at: datetime | None = None


class DeliveryOut(BaseModel):
    model_config = with_examples(EXAMPLE_DELIVERY, from_attributes=True)

    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    webhook_id: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    created_at: datetime


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    status_code: int | None
    duration_ms: int
    error: str | None


class DeliveryDetail(DeliveryOut):
    """One delivery with its attempt log, oldest attempt first."""

    model_config = with_examples(
        {
            **EXAMPLE_DELIVERY,
            "attempt_log": [
                {"at": "2026-01-31T12:15:00Z", "status_code": None, "duration_ms": 10000, "error": "timed out"},
                {"at": "2026-01-31T12:15:05Z", "status_code": 503, "duration_ms": 120, "error": None},
            ],
        }
    )

    attempt_log: list[AttemptOut]


class RecoverRequest(BaseModel):
    model_config = with_examples({"since": "2026-01-31T08:00:00Z"}, extra="forbid")

    # RFC 3339, with its offset: the failed deliveries made at or after this time are sent again.
    since: RequestDatetime

    @field_validator("since")
    @classmethod
    def _not_ahead(cls, since: datetime) -> datetime:
        if since > datetime.now(UTC):
            raise ValueError("must not be in the future")
        return since


class Recovered(BaseModel):
    model_config = with_examples({"requeued": 12})

    # Failed deliveries made pending again, each on a fresh retry schedule with its own webhook-id.
    requeued: int
