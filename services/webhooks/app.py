"""The webhooks service's app: the shared service app, with its workers (`context.py`) in the
lifespan state."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.webhooks.api import router
from services.webhooks.context import webhooks_context
from services.webhooks.settings import WebhooksSettings
from shared.app import ServiceSpec, create_service_app

MIGRATIONS_DIR = Path(__file__).parent


SPEC = ServiceSpec(
    name="webhooks",
    title="Portico webhooks service",
    routers=[router],
    needs_http_client=True,
    context=webhooks_context,
)


def create_app(settings: WebhooksSettings | None = None) -> FastAPI:
    return create_service_app(settings or WebhooksSettings(), SPEC)
