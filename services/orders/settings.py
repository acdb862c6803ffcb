from __future__ import annotations

from typing import Annotated

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat

from shared.settings import (
    AtLeastOne,
    BaseServiceSettings,
    ServiceAddressSetting,
    process_config,
    service_database,
    service_port,
    service_url,
)


class OrdersSettings(BaseServiceSettings):
    model_config = process_config("orders")

    port: int = service_port("orders")
    database_url: str = service_database("orders")

    users_url: ServiceAddressSetting = service_url("users")
    inventory_url: ServiceAddressSetting = service_url("inventory")
    http_timeout_seconds: PositiveFloat = 4.0
    """The longest the orders service waits for users or inventory. Below the gateway's timeout for its calls here
    (GATEWAY_HTTP_TIMEOUT_SECONDS, 10 s): a hung users or inventory service is answered here as a 504 naming it, before
    the gateway gives up on this service and would name the wrong one."""
    placement_concurrency: AtLeastOne = 32
    """Orders placed at once by this process; others wait up to `placement_queue_seconds` for a slot, then answer 503
    ORDERS_BUSY with Retry-After (an overloaded service sheds work instead of timing out)."""
    placement_queue_seconds: PositiveFloat = 2.0
    """How long an order waits for a placement slot."""

    attempt_timeout_seconds: PositiveFloat = 60.0
    """An order attempt still unfinished after this long is taken to belong to a request that died (process crash, lost
    connection): the recovery task releases its stock. It must exceed the longest a request can take (a users call, a
    reserve call and a compensation, each bounded by the HTTP timeout)."""
    recovery_interval_seconds: PositiveFloat = 5.0
    """How often the recovery task looks for work (0 is not allowed: it would spin)."""
    recovery_grace_seconds: NonNegativeFloat = 10.0
    """Confirmations and releases a request is still doing itself are left alone this long."""
    recovery_enabled: bool = True
    """The recovery task."""
    idempotency_ttl_seconds: Annotated[int, Field(ge=60)] = 24 * 3600
    """How long an Idempotency-Key is remembered (the gateway's own store keeps keys 24 h too)."""
    events_lock_timeout_ms: Annotated[int, Field(ge=10, le=60_000)] = 2000
    """The longest the event feed waits for order transactions in flight (PostgreSQL); past it the feed answers 503
    EVENTS_BUSY."""
    events_retention_seconds: NonNegativeInt = 0
    """Events older than this are removed by the recovery task; 0 keeps every event. Set it longer than any reader of
    the feed may fall behind (the webhooks relay, the gateway's streams): a reader resuming from before it is told it
    missed events (the gateway answers 410)."""
