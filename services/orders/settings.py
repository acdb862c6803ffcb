from __future__ import annotations

from pydantic import AnyHttpUrl, Field

from shared.contract import PROCESSES
from shared.settings import BaseServiceSettings, process_config, sqlite_url


class OrdersSettings(BaseServiceSettings):
    model_config = process_config("orders")

    port: int = PROCESSES["orders"].port
    database_url: str = sqlite_url("orders")

    users_url: AnyHttpUrl = AnyHttpUrl(PROCESSES["users"].default_url)
    inventory_url: AnyHttpUrl = AnyHttpUrl(PROCESSES["inventory"].default_url)
    # Below the gateway's timeout for its calls here (GATEWAY_HTTP_TIMEOUT_SECONDS, 10 s): a hung users
    # or inventory service is answered here as a 504 naming it, before the gateway gives up on this
    # service and would name the wrong one.
    http_timeout_seconds: float = Field(default=4.0, gt=0)
    # Orders placed at once by this process; others wait up to the queue time for a slot, then answer
    # 503 ORDERS_BUSY with Retry-After (an overloaded service sheds work instead of timing out).
    placement_concurrency: int = Field(default=32, ge=1)
    placement_queue_seconds: float = Field(default=2.0, gt=0)

    # An order attempt still unfinished after this long is taken to belong to a request that died
    # (process crash, lost connection): the recovery task releases its stock. It must exceed the
    # longest a request can take (a users call, a reserve call and a compensation, each bounded by
    # the HTTP timeout).
    attempt_timeout_seconds: float = Field(default=60.0, gt=0)
    # How often the recovery task looks for work; a value of 0 is not allowed (it would spin).
    recovery_interval_seconds: float = Field(default=5.0, gt=0)
    # Confirmations and releases the request itself is doing are left alone for this long.
    recovery_grace_seconds: float = Field(default=10.0, ge=0)
    recovery_enabled: bool = True
    # How long an Idempotency-Key is remembered (the gateway's own store keeps keys 24 h too).
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    # The event feed waits at most this long for order transactions in flight (PostgreSQL).
    events_lock_timeout_ms: int = Field(default=2000, ge=10, le=60_000)
    # Events older than this are removed by the recovery task; 0 keeps every event. Set it longer
    # than any reader of the feed may fall behind (the webhooks relay, the gateway's streams): a
    # reader resuming from before it is told it missed events (the gateway answers 410).
    events_retention_seconds: int = Field(default=0, ge=0)
