from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.inventory.api import router
from services.inventory.settings import InventorySettings
from shared.app import ServiceSpec, create_service_app
from shared.settings import BaseServiceSettings

MIGRATIONS_DIR = Path(__file__).parent


def create_app(settings: BaseServiceSettings | None = None) -> FastAPI:
    settings = settings or InventorySettings()
    return create_service_app(
        settings, ServiceSpec(name="inventory", title="Portico inventory service", routers=[router])
    )
