"""The webhooks service's app: the shared service app, with the relay (and, as they come, the
service's other workers) in its context."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI

from services.webhooks.api import router
from services.webhooks.deps import WebhooksContext
from services.webhooks.relay import running_relay
from services.webhooks.settings import WebhooksSettings
from shared.app import ServiceSpec, create_service_app
from shared.state import ServiceState

MIGRATIONS_DIR = Path(__file__).parent


@contextlib.asynccontextmanager
async def webhooks_context(state: ServiceState[WebhooksSettings, None]) -> AsyncIterator[WebhooksContext]:
    async with running_relay(state) as relay:
        yield WebhooksContext(relay=relay)


SPEC = ServiceSpec(
    name="webhooks",
    title="Portico webhooks service",
    routers=[router],
    needs_http_client=True,
    context=webhooks_context,
)


def create_app(settings: WebhooksSettings | None = None) -> FastAPI:
    return create_service_app(settings or WebhooksSettings(), SPEC)
