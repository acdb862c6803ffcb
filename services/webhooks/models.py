from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import SerialKey, UTCDateTime, new_id, utcnow
from shared.repository import TenantRow
from shared.telemetry import TRACEPARENT_LENGTH

ACTIVE = "active"
DISABLED = "disabled"


class Base(DeclarativeBase):
    pass


class Endpoint(Base, TenantRow):
    """A tenant's receiver: where its events go and with which secret they are signed."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(2048))
    # Sorted, distinct event types.
    events: Mapped[list[str]] = mapped_column(JSON)
    # "active" or "disabled" (by its owner, or by the receiver answering 410 Gone).
    status: Mapped[str] = mapped_column(String(20), default=ACTIVE)
    # Kept in the clear: signing needs the key itself, not a hash of it.
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100), default=None)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Attempts started per second at most, across every worker (None: no limit).
    rate_limit_per_second: Mapped[int | None] = mapped_column(Integer, default=None)
    # The earliest start of the endpoint's next attempt under its rate limit; the claims that lock the
    # endpoint row move it on, one interval per attempt.
    rate_next_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # Failed attempts since the last one that succeeded, and when the first of them was made: the
    # failure rule disables an endpoint on these (`WEBHOOKS_FAILING_ENDPOINT_*`).
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    @property
    def enabled(self) -> bool:
        """The older shape of `status`, kept for clients that still send and read it."""
        return self.status == ACTIVE

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self.status = ACTIVE if value else DISABLED


class Event(Base):
    """An event owed to endpoints: an order event as the orders outbox published it (its id is the
    outbox's, so it is stored once), or one this service makes itself (`endpoint.disabled`, seq 0)."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # Position in the orders feed (0 for the service's own events).
    seq: Mapped[int] = mapped_column(BigInteger)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    type: Mapped[str] = mapped_column(String(100))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    # The trace of the request that wrote the event, which each delivery attempt continues.
    traceparent: Mapped[str | None] = mapped_column(String(TRACEPARENT_LENGTH), default=None)


class Delivery(Base, TenantRow):
    """One event owed to one endpoint. The delivery worker moves it on from `pending`."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id", name="uq_webhook_deliveries_event_endpoint"),
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at", "id"),
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
        # A claim's tenants with due work, and the due deliveries of each in order.
        Index("ix_webhook_deliveries_status_tenant_next", "status", "tenant_id", "next_attempt_at"),
        # Attempts in flight (a live lease), counted by every claim.
        Index("ix_webhook_deliveries_lease", "lease_expires_at"),
        # What the retention deletes, oldest first.
        Index("ix_webhook_deliveries_created", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Attempts since the delivery was created or last replayed: the position in the retry schedule.
    round_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Replays asked for; an attempt in flight during a replay leaves the replay's schedule alone.
    replays: Mapped[int] = mapped_column(Integer, default=0)
    # Set while a worker holds the delivery: its claim, and when the claim lapses if the worker dies.
    lease_token: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    @property
    def webhook_id(self) -> str:
        """The `webhook-id` receivers deduplicate on: one per event and endpoint, like the row."""
        return webhook_id_of(self.id)


def webhook_id_of(delivery_id: str) -> str:
    return "msg_" + delivery_id.replace("-", "")


class DeliveryAttempt(SerialKey, Base):
    """One try at a delivery, as the attempt log shows it."""

    __tablename__ = "webhook_delivery_attempts"
    __table_args__ = (Index("ix_webhook_delivery_attempts_delivery_at", "delivery_id", "at", "id"),)

    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    duration_ms: Mapped[int] = mapped_column(Integer)
    # What went wrong, with at most a few hundred bytes of what the receiver answered.
    error: Mapped[str | None] = mapped_column(String(500), default=None)
    # When the attempt that follows a failed one was scheduled (None: none was; the last one or a success).
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class RelayCursor(Base):
    """How far the relay has read a feed: everything up to `position` is stored."""

    __tablename__ = "webhook_relay_cursors"

    source: Mapped[str] = mapped_column(String(50), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
