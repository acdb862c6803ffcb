from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from services.orders import recovery
from services.orders.api import router
from services.orders.service import OrdersContext
from services.orders.settings import OrdersSettings
from shared.app import ServiceSpec, create_service_app
from shared.http import ServiceClient
from shared.settings import BaseServiceSettings

MIGRATIONS_DIR = Path(__file__).parent


def create_app(settings: BaseServiceSettings | None = None) -> FastAPI:
    settings = settings or OrdersSettings()
    assert isinstance(settings, OrdersSettings)
    orders_settings = settings

    @contextlib.asynccontextmanager
    async def extra(state: dict[str, Any]) -> AsyncIterator[None]:
        ctx = OrdersContext(
            settings=orders_settings,
            sessionmaker=state["sessionmaker"],
            users=ServiceClient("users", str(orders_settings.users_url), state["http"], state["identity_signer"]),
            inventory=ServiceClient(
                "inventory", str(orders_settings.inventory_url), state["http"], state["identity_signer"]
            ),
        )
        state["orders"] = ctx
        async with recovery.running(ctx):
            yield

    return create_service_app(
        settings,
        ServiceSpec(
            name="orders",
            title="Portico orders service",
            routers=[router],
            needs_http_client=True,
            extra_lifespan=extra,
        ),
    )
