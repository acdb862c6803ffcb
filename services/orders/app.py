from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.orders.api import router
from services.orders.settings import OrdersSettings
from shared.app import ServiceSpec, create_service_app
from shared.settings import BaseServiceSettings

MIGRATIONS_DIR = Path(__file__).parent


def create_app(settings: BaseServiceSettings | None = None) -> FastAPI:
    settings = settings or OrdersSettings()
    return create_service_app(settings, ServiceSpec(name="orders", title="Portico orders service", routers=[router]))
