"""The orders service's app: the shared service app, with the orders context (the users and
inventory clients) and the recovery task as its own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI

from services.orders import recovery
from services.orders.api import router
from services.orders.service import OrdersContext
from services.orders.settings import OrdersSettings
from shared.service_app import ServiceSpec, create_service_app
from shared.state import ServiceState

MIGRATIONS_DIR = Path(__file__).parent


@contextlib.asynccontextmanager
async def orders_context(state: ServiceState[OrdersSettings, None]) -> AsyncIterator[OrdersContext]:
    """The orders context, with the recovery task running for as long as the app does."""
    ctx = OrdersContext(
        settings=state.settings,
        sessionmaker=state.sessionmaker,
        users=state.service_client("users", state.settings.users_url),
        inventory=state.service_client("inventory", state.settings.inventory_url),
        placements=asyncio.Semaphore(state.settings.placement_concurrency),
    )
    async with recovery.running(ctx):
        yield ctx


SPEC = ServiceSpec(
    name="orders", title="Portico orders service", routers=[router], needs_http_client=True, context=orders_context
)


def create_app(settings: OrdersSettings | None = None) -> FastAPI:
    return create_service_app(settings or OrdersSettings(), SPEC)
