"""The inventory service's app: the shared service app; it adds nothing of its own to the state."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.inventory.api import router
from services.inventory.settings import InventorySettings
from shared.service_app import ServiceSpec, create_service_app

MIGRATIONS_DIR = Path(__file__).parent

SPEC: ServiceSpec[InventorySettings, None] = ServiceSpec(
    name="inventory", title="Portico inventory service", routers=[router]
)


def create_app(settings: InventorySettings | None = None) -> FastAPI:
    return create_service_app(settings or InventorySettings(), SPEC)
