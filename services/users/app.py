"""The users service's app: the shared service app, with a token issuer as its own collaborator."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI

from services.users.api import router
from services.users.security import TokenIssuer
from services.users.settings import UsersSettings
from shared.app import ServiceSpec, create_service_app
from shared.state import ServiceState

MIGRATIONS_DIR = Path(__file__).parent


@contextlib.asynccontextmanager
async def token_issuer(state: ServiceState[UsersSettings, None]) -> AsyncIterator[TokenIssuer]:
    yield TokenIssuer(state.settings)


SPEC = ServiceSpec(name="users", title="Portico users service", routers=[router], context=token_issuer)


def create_app(settings: UsersSettings | None = None) -> FastAPI:
    return create_service_app(settings or UsersSettings(), SPEC)
