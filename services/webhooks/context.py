"""What the webhooks processes add to the common service state: the service's relay and the resolver
its registration checks host names with; the delivery worker process's worker loop. Each runs for the
life of its app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from services.webhooks.relay import OrdersRelay, running_relay
from services.webhooks.settings import WebhooksSettings
from services.webhooks.url_safety import Resolver
from services.webhooks.worker import DeliveryWorker, WorkerMetrics, running_delivery_worker
from shared.service_app import ContextFactory
from shared.state import ServiceState


@dataclass(frozen=True, slots=True)
class WebhooksContext:
    relay: OrdersRelay
    # Registration resolves host names with it: the system's, or a test's table.
    resolver: Resolver


def webhooks_context(resolver: Resolver) -> ContextFactory[WebhooksSettings, WebhooksContext]:
    @contextlib.asynccontextmanager
    async def context(state: ServiceState[WebhooksSettings, None]) -> AsyncIterator[WebhooksContext]:
        async with running_relay(state) as relay:
            yield WebhooksContext(relay=relay, resolver=resolver)

    return context


@dataclass(frozen=True, slots=True)
class DeliveryContext:
    worker: DeliveryWorker
    # The worker's loop; the process is not ready once it has ended.
    loop: asyncio.Task[None]


def delivery_context(metrics: WorkerMetrics, resolver: Resolver) -> ContextFactory[WebhooksSettings, DeliveryContext]:
    @contextlib.asynccontextmanager
    async def context(state: ServiceState[WebhooksSettings, None]) -> AsyncIterator[DeliveryContext]:
        async with running_delivery_worker(state, metrics, resolver) as (worker, loop):
            yield DeliveryContext(worker=worker, loop=loop)

    return context


async def check_worker(state: ServiceState[WebhooksSettings, DeliveryContext]) -> None:
    if state.context.loop.done():
        raise RuntimeError("the delivery loop is not running")
