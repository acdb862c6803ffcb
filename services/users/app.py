"""The users service's app: the shared service app, with a token issuer, the password hasher and the
login throttle as its own collaborators."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI

from services.users.api import router
from services.users.security import LoginThrottle, PasswordHasher, TokenIssuer, UsersContext
from services.users.settings import UsersSettings
from services.users.signing import KeyRing
from shared.app import ServiceSpec, create_service_app
from shared.state import ServiceState

MIGRATIONS_DIR = Path(__file__).parent


@contextlib.asynccontextmanager
async def users_context(state: ServiceState[UsersSettings, None]) -> AsyncIterator[UsersContext]:
    settings = state.settings
    async with contextlib.AsyncExitStack() as stack:
        keys = None
        if settings.jwt_algorithm == "RS256":
            keys = await stack.enter_async_context(KeyRing(settings, state.sessionmaker).running())
        hasher = PasswordHasher(
            settings.password_hash_concurrency,
            settings.password_hash_queue,
            settings.password_hash_queue_timeout_seconds,
        )
        stack.callback(hasher.close)
        yield UsersContext(
            issuer=TokenIssuer(settings, keys),
            hasher=hasher,
            throttle=LoginThrottle(settings.login_free_failures, settings.login_max_delay_seconds),
        )


SPEC = ServiceSpec(name="users", title="Portico users service", routers=[router], context=users_context)


def create_app(settings: UsersSettings | None = None) -> FastAPI:
    return create_service_app(settings or UsersSettings(), SPEC)
