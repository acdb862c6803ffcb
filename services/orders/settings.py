from __future__ import annotations

from pydantic import Field

from shared.contract import PROCESSES
from shared.settings import (
    SERVICE_URL,
    BaseServiceSettings,
    ServiceAddressSetting,
    process_config,
    service_address,
    sqlite_url,
)


class OrdersSettings(BaseServiceSettings):
    model_config = process_config("orders")

    port: int = Field(default=PROCESSES["orders"].port, description="The port the orders service listens on.")
    database_url: str = Field(
        default=sqlite_url("orders"),
        description=(
            "The orders database: a SQLite file under ./var by default, `postgresql+asyncpg://...` for PostgreSQL."
        ),
    )

    users_url: ServiceAddressSetting = Field(
        default=service_address(PROCESSES["users"].default_url), description=SERVICE_URL.format("users")
    )
    inventory_url: ServiceAddressSetting = Field(
        default=service_address(PROCESSES["inventory"].default_url), description=SERVICE_URL.format("inventory")
    )
    http_timeout_seconds: float = Field(
        default=4.0,
        gt=0,
        description=(
            "The longest the orders service waits for users or inventory. Below the gateway's timeout for its "
            "calls here (GATEWAY_HTTP_TIMEOUT_SECONDS, 10 s): a hung users or inventory service is answered here "
            "as a 504 naming it, before the gateway gives up on this service and would name the wrong one."
        ),
    )
    placement_concurrency: int = Field(
        default=32,
        ge=1,
        description=(
            "Orders placed at once by this process; others wait up to `placement_queue_seconds` for a slot, then "
            "answer 503 ORDERS_BUSY with Retry-After (an overloaded service sheds work instead of timing out)."
        ),
    )
    placement_queue_seconds: float = Field(
        default=2.0, gt=0, description="How long an order waits for a placement slot."
    )

    attempt_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "An order attempt still unfinished after this long is taken to belong to a request that died (process "
            "crash, lost connection): the recovery task releases its stock. It must exceed the longest a request "
            "can take (a users call, a reserve call and a compensation, each bounded by the HTTP timeout)."
        ),
    )
    recovery_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often the recovery task looks for work (0 is not allowed: it would spin).",
    )
    recovery_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        description="Confirmations and releases a request is still doing itself are left alone this long.",
    )
    recovery_enabled: bool = Field(default=True, description="The recovery task.")
    idempotency_ttl_seconds: int = Field(
        default=24 * 3600,
        ge=60,
        description="How long an Idempotency-Key is remembered (the gateway's own store keeps keys 24 h too).",
    )
    events_lock_timeout_ms: int = Field(
        default=2000,
        ge=10,
        le=60_000,
        description=(
            "The longest the event feed waits for order transactions in flight (PostgreSQL); past it the feed "
            "answers 503 EVENTS_BUSY."
        ),
    )
    events_retention_seconds: int = Field(
        default=0,
        ge=0,
        description=(
            "Events older than this are removed by the recovery task; 0 keeps every event. Set it longer than any "
            "reader of the feed may fall behind (the webhooks relay, the gateway's streams): a reader resuming "
            "from before it is told it missed events (the gateway answers 410)."
        ),
    )
