from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from services.webhooks.api import router
from services.webhooks.delivery_api import router as delivery_router
from services.webhooks.relay import relay_lifespan
from services.webhooks.settings import WebhooksSettings
from services.webhooks.url_safety import Resolver
from shared.app import ServiceSpec, create_service_app
from shared.settings import BaseServiceSettings

MIGRATIONS_DIR = Path(__file__).parent


def create_app(settings: BaseServiceSettings | None = None, *, resolver: Resolver | None = None) -> FastAPI:
    """`resolver` replaces the system's for registration checks (tests: names without DNS)."""
    settings = settings or WebhooksSettings()
    assert isinstance(settings, WebhooksSettings)
    webhooks_settings = settings

    @contextlib.asynccontextmanager
    async def extra(state: dict[str, Any]) -> AsyncIterator[None]:
        state["resolver"] = resolver
        async with relay_lifespan(webhooks_settings, state):
            yield

    return create_service_app(
        settings,
        ServiceSpec(
            name="webhooks",
            title="Portico webhooks service",
            routers=[router, delivery_router],
            needs_http_client=True,
            extra_lifespan=extra,
        ),
    )
