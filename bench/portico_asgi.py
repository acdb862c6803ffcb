"""The gateway as an application factory, for ASGI servers other than its own CLI (granian, gunicorn,
uvicorn's worker supervisor).

It does what `python -m gateway serve` does before it starts uvicorn: settings from the environment
and the same logging, so every server runs the same pipeline with the same JSON access log.
"""

from __future__ import annotations

from fastapi import FastAPI

from gateway.app import create_app
from gateway.settings import GatewaySettings
from shared.logging import configure_logging


def app() -> FastAPI:
    settings = GatewaySettings()
    configure_logging("gateway", level=settings.log_level, json_lines=settings.log_json)
    return create_app(settings)
