from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator
from pydantic_settings import NoDecode

from shared.contract import PROCESSES, WEBHOOKS_WORKER, WORKERS
from shared.events import FEED_MAX_LIMIT
from shared.settings import (
    BaseServiceSettings,
    ServiceAddressSetting,
    process_config,
    service_address,
    service_port,
    sqlite_url,
)

DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
# Time a lease keeps beyond the attempt's own timeout, for recording its outcome.
LEASE_MARGIN_SECONDS = 5.0


def _parse_schedule(value: Any) -> Any:
    """`5,300,1800` from the environment; a sequence of numbers from code."""
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
        if not all(parts):
            raise ValueError("write the delays as comma-separated seconds, e.g. 5,300,1800")
        return tuple(parts)
    return value


RetrySchedule = Annotated[
    tuple[Annotated[float, Field(ge=0, le=7 * 24 * 3600)], ...],
    NoDecode,
    BeforeValidator(_parse_schedule),
    Field(min_length=1, max_length=50),
]
# Attempts or connections at once, in one worker or across all of them.
Concurrency = Annotated[int, Field(ge=1, le=1000)]


class WebhooksSettings(BaseServiceSettings):
    model_config = process_config("webhooks")

    port: int = service_port("webhooks")
    database_url: str = sqlite_url("webhooks")
    """The webhooks database (the service's and the delivery worker's): a SQLite file under ./var by default,
    `postgresql+asyncpg://...` for PostgreSQL."""

    orders_url: ServiceAddressSetting = service_address(PROCESSES["orders"].default_url)
    """The orders service, whose event feed the relay pulls."""
    relay_enabled: bool = True
    """The relay; off only where something else drives it (tests call `OrdersRelay.run_once`)."""
    relay_interval_seconds: Annotated[float, Field(gt=0, le=60)] = 0.5
    """The relay's poll interval when idle; a full batch is followed at once by the next."""
    relay_batch_size: Annotated[int, Field(ge=1, le=FEED_MAX_LIMIT)] = 100
    """Events per poll (the orders feed serves at most 500)."""
    relay_max_backoff_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    """After failures the relay waits exponentially longer, with jitter, up to this."""

    allow_private_urls: bool = False
    """For local demos only: lets endpoints point at loopback and private networks (a receiver on localhost or in a
    compose network). Link-local, multicast, unspecified, reserved and cloud metadata addresses stay refused whatever
    this says."""
    dns_timeout_seconds: Annotated[float, Field(gt=0, le=30)] = 2.0
    """How long resolving an endpoint's host may take; a registration whose lookup times out is accepted."""
    max_endpoints_per_tenant: Annotated[int, Field(ge=1, le=1000)] = 20
    """Endpoints one tenant may have; it also bounds how many deliveries one event makes."""
    secret_rotation_grace_seconds: Annotated[int, Field(ge=0, le=7 * 24 * 3600)] = 24 * 3600
    """After a rotation the previous secret keeps signing deliveries this long, next to the new one, so receivers can
    switch without dropping any (Standard Webhooks allows several signatures)."""

    worker_port: int = WORKERS[WEBHOOKS_WORKER].port
    """The port of the delivery worker (`python -m services.webhooks worker`): its `/health/live`, `/health/ready`
    (database reachable and the loop running) and `/metrics`, on `host`."""
    delivery_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 15.0
    """A 2xx within this time is success; the whole attempt (resolving, connecting, sending, the answer's headers and
    the few bytes of body kept) must fit in it."""
    retry_schedule_seconds: RetrySchedule = DEFAULT_RETRY_SCHEDULE
    """Delays after each failed attempt (comma-separated, 1 to 50 of them, each with up to 10% jitter); one attempt more
    than there are delays."""
    worker_concurrency: Concurrency = 32
    """Attempts one worker runs at once."""
    endpoint_concurrency: Concurrency = 4
    """Attempts to one endpoint at once across every worker: a slow receiver holds at most this many."""
    # A tenant whose receivers hang holds at most its share of each worker's slots and connections,
    # and the other tenants' deliveries keep flowing.
    tenant_concurrency: Concurrency = 8
    """Attempts one tenant may have in flight in one worker."""
    tenant_host_concurrency: Concurrency = 4
    """Connections one worker opens for one tenant to one receiver host (host:port)."""
    worker_poll_interval_seconds: Annotated[float, Field(gt=0, le=60)] = 0.5
    """How often an idle worker looks for due deliveries."""
    delivery_lease_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    """How long a claimed delivery is the worker's (at least `delivery_timeout_seconds` + 5); a worker that dies lets it
    go when it expires."""
    worker_stop_grace_seconds: Annotated[float, Field(ge=0, le=300)] = 10.0
    """On SIGTERM the worker stops claiming and lets attempts in flight finish this long, then gives back what is
    left."""

    failing_endpoint_seconds: Annotated[float, Field(ge=0, le=365 * 24 * 3600)] = 5 * 24 * 3600
    """The failure rule: an endpoint whose attempts have all failed for this long (and at least
    `failing_endpoint_attempts` times in a row) is disabled, and `endpoint.disabled` (reason `failing`) sent to the
    tenant's other endpoints."""
    failing_endpoint_attempts: Annotated[int, Field(ge=0, le=100_000)] = 10
    """The failed attempts in a row the failure rule needs at least; 0 turns the rule off."""

    delivery_retention_days: Annotated[float, Field(gt=0, le=3650)] = 30.0
    """Finished deliveries (with their attempt logs) are deleted by the workers this long after they were made; pending
    ones stay whatever their age."""
    retention_interval_seconds: Annotated[float, Field(gt=0, le=7 * 24 * 3600)] = 3600.0
    """How often each worker deletes what is past retention."""
    retention_batch_size: Annotated[int, Field(ge=1, le=100_000)] = 1000
    """Rows deleted per transaction, so each stays short."""

    @model_validator(mode="after")
    def _lease_outlives_an_attempt(self) -> WebhooksSettings:
        # A lease that could expire during an attempt would let a second worker start the same one.
        needed = self.delivery_timeout_seconds + LEASE_MARGIN_SECONDS
        if self.delivery_lease_seconds < needed:
            raise ValueError(
                "delivery_lease_seconds must be at least delivery_timeout_seconds + "
                f"{LEASE_MARGIN_SECONDS:g} ({needed:g})"
            )
        return self
