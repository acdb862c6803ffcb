from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.webhooks.api import router
from services.webhooks.settings import WebhooksSettings
from shared.app import ServiceSpec, create_service_app
from shared.settings import BaseServiceSettings

MIGRATIONS_DIR = Path(__file__).parent


def create_app(settings: BaseServiceSettings | None = None) -> FastAPI:
    settings = settings or WebhooksSettings()
    return create_service_app(
        settings, ServiceSpec(name="webhooks", title="Portico webhooks service", routers=[router])
    )
