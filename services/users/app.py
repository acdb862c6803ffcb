from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from services.users.api import router
from services.users.security import TokenIssuer
from services.users.settings import UsersSettings
from shared.app import ServiceSpec, create_service_app
from shared.settings import BaseServiceSettings

MIGRATIONS_DIR = Path(__file__).parent


def create_app(settings: BaseServiceSettings | None = None) -> FastAPI:
    settings = settings or UsersSettings()
    assert isinstance(settings, UsersSettings)
    issuer_settings = settings

    @contextlib.asynccontextmanager
    async def extra(state: dict[str, Any]) -> AsyncIterator[None]:
        state["token_issuer"] = TokenIssuer(issuer_settings)
        yield

    return create_service_app(
        settings, ServiceSpec(name="users", title="Portico users service", routers=[router], extra_lifespan=extra)
    )
