"""What the webhooks service adds to the common service state: its background workers, started and
stopped with the app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from services.webhooks.relay import OrdersRelay, running_relay
from services.webhooks.settings import WebhooksSettings
from shared.state import ServiceState


@dataclass(frozen=True, slots=True)
class WebhooksContext:
    relay: OrdersRelay


@contextlib.asynccontextmanager
async def webhooks_context(state: ServiceState[WebhooksSettings, None]) -> AsyncIterator[WebhooksContext]:
    async with running_relay(state) as relay:
        yield WebhooksContext(relay=relay)
