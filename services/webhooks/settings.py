from __future__ import annotations

from pydantic import AnyHttpUrl, Field

from shared.contract import PROCESSES
from shared.settings import BaseServiceSettings, process_config, sqlite_url


class WebhooksSettings(BaseServiceSettings):
    model_config = process_config("webhooks")

    port: int = PROCESSES["webhooks"].port
    database_url: str = sqlite_url("webhooks")

    # The orders service, whose event feed the relay pulls.
    orders_url: AnyHttpUrl = AnyHttpUrl(PROCESSES["orders"].default_url)
    # Off only where something else drives the relay (tests call `OrdersRelay.run_once` themselves).
    relay_enabled: bool = True
    relay_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    relay_batch_size: int = Field(default=100, ge=1, le=500)  # the orders feed serves at most 500
    relay_max_backoff_seconds: float = Field(default=30.0, gt=0, le=600)

    # For local demos only: lets endpoints point at loopback and private networks (a receiver on
    # localhost or in a compose network). Link-local, multicast, unspecified and cloud metadata
    # addresses stay refused whatever this says.
    allow_private_urls: bool = False
    dns_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    # Bounds the fan-out of one event and the size of a tenant's registry.
    max_endpoints_per_tenant: int = Field(default=20, ge=1, le=1000)
    # After a rotation the previous secret keeps signing deliveries this long, next to the new one,
    # so receivers can switch without dropping any (Standard Webhooks allows several signatures).
    secret_rotation_grace_seconds: int = Field(default=24 * 3600, ge=0, le=7 * 24 * 3600)
