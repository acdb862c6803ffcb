"""The users service's app: the shared service app, with a token issuer, the password hasher and the
login throttle as its own collaborators."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.users.api import router
from services.users.security import LoginThrottle, PasswordHasher, PasswordMetrics, TokenIssuer, UsersContext
from services.users.settings import UsersSettings
from services.users.signing import KeyRing
from shared.service_app import ContextFactory, ServiceSpec, create_service_app
from shared.state import ServiceState

MIGRATIONS_DIR = Path(__file__).parent


def users_context(metrics: PasswordMetrics) -> ContextFactory[UsersSettings, UsersContext]:
    """What the users service adds to the common state, counting into `metrics`."""

    @contextlib.asynccontextmanager
    async def context(state: ServiceState[UsersSettings, None]) -> AsyncIterator[UsersContext]:
        async with _context(state, metrics) as built:
            yield built

    return context


@contextlib.asynccontextmanager
async def _context(state: ServiceState[UsersSettings, None], metrics: PasswordMetrics) -> AsyncIterator[UsersContext]:
    settings = state.settings
    async with contextlib.AsyncExitStack() as stack:
        keys = None
        if settings.jwt_algorithm == "RS256":
            keys = await stack.enter_async_context(KeyRing(settings, state.sessionmaker).running())
        hasher = PasswordHasher(
            settings.password_hash_concurrency,
            settings.password_hash_queue,
            settings.password_hash_queue_timeout_seconds,
            metrics,
        )
        stack.callback(hasher.close)
        yield UsersContext(
            issuer=TokenIssuer(settings, keys),
            hasher=hasher,
            throttle=LoginThrottle(settings.login_free_failures, settings.login_max_delay_seconds),
            metrics=metrics,
        )


def create_app(settings: UsersSettings | None = None) -> FastAPI:
    # The service's own metrics, served on /metrics with the HTTP ones.
    registry = CollectorRegistry()
    spec = ServiceSpec(
        name="users",
        title="Portico users service",
        routers=[router],
        context=users_context(PasswordMetrics(registry)),
    )
    return create_service_app(settings or UsersSettings(), spec, registry=registry)
