from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from scripts.devstack import Stack, free_port
from shared.contract import IDENTITY_HEADER, PROCESSES, Identity
from shared.identity_token import IdentitySigner
from shared.migrations import upgrade
from tests.infra import SERVICE_DATABASES, Servers, servers
from tests.otlp import OtlpReceiver

ROOT = Path(__file__).resolve().parent.parent
# Strong secrets for the test environment (weak ones are refused outside development).
INTERNAL_SECRET = secrets.token_urlsafe(48)
JWT_SECRET = secrets.token_urlsafe(48)
# The suite's bursts (up to 200 requests of one tenant at once) assert exact outcomes, on a test machine
# busy with two sessions: the adaptive limit would rightly shed some of them. So the suite's processes
# have a fixed, high limit; admission has tests of its own (tests/e2e/test_overload.py sets its own).
FIXED_ADMISSION = {"admission_min_limit": 1000, "admission_initial_limit": 1000, "admission_max_limit": 1000}


@pytest.fixture(scope="session")
def infra() -> Iterator[Servers]:
    with servers() as found:
        yield found


@pytest.fixture(scope="session")
def migrated(infra: Servers) -> Servers:
    """Every service database migrated to head (through Alembic, as in production)."""
    for name in SERVICE_DATABASES:
        upgrade(ROOT / "services" / name, infra.database_url(name))
    return infra


def service_env(infra: Servers) -> dict[str, str]:
    """Environment of a whole stack on the session's PostgreSQL databases and Redis prefix."""
    env = {
        "GATEWAY_REDIS_URL": infra.redis_url,
        "GATEWAY_REDIS_KEY_PREFIX": infra.redis_prefix,
        "GATEWAY_JWT_SECRET": JWT_SECRET,
        "USERS_JWT_SECRET": JWT_SECRET,
        # Every test reaches the session's stack from 127.0.0.1: one client address for the whole
        # suite, whose failed logins and bad keys are on purpose. The limit has tests of its own.
        "GATEWAY_AUTH_FAILURE_LIMIT": "100000/60s",
        # The test machine runs several suites at once: an order through the gateway (its own waits for
        # connections, the users and inventory calls of 4 s at most each, the store) may take longer than
        # the production 10 s there. Below GATEWAY_IDEMPOTENCY_LOCK_SECONDS (30), as the settings require.
        "GATEWAY_HTTP_TIMEOUT_SECONDS": "20",
    }
    for name, process in PROCESSES.items():
        prefix = process.env_prefix
        env[f"{prefix}ENVIRONMENT"] = "test"
        env[f"{prefix}INTERNAL_TOKEN_SECRET"] = INTERNAL_SECRET
        for setting, value in FIXED_ADMISSION.items():
            env[f"{prefix}{setting.upper()}"] = str(value)
        if process.has_database:
            env[f"{prefix}DATABASE_URL"] = infra.database_url(name)
            # Four services, several stacks per session: keep well inside PostgreSQL's 100 connections.
            env[f"{prefix}DB_POOL_SIZE"] = "4"
            env[f"{prefix}DB_MAX_OVERFLOW"] = "4"
    return env


def settings_kwargs(infra: Servers, service: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "environment": "test",
        "internal_token_secret": INTERNAL_SECRET,
        "database_url": infra.database_url(service),
        "access_log": False,
        **FIXED_ADMISSION,
    }
    if service == "users":
        kwargs["jwt_secret"] = JWT_SECRET
    return kwargs


@pytest.fixture(scope="session")
def signer() -> IdentitySigner:
    return IdentitySigner(INTERNAL_SECRET, 60)


def internal_headers(signer: IdentitySigner, audience: str, identity: Identity) -> dict[str, str]:
    return {IDENTITY_HEADER: signer.sign(identity, audience)}


@asynccontextmanager
async def running_app(
    app: FastAPI, peer: tuple[str, int] = ("127.0.0.1", 123)
) -> AsyncIterator[tuple[httpx.AsyncClient, Mapping[str, Any]]]:
    """Runs an app in-process, lifespan included: a client connected from `peer`, and the lifespan
    state. Like uvicorn, each request gets its own shallow copy of the state."""
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            await app({**scope, "state": dict(state or {})}, receive, send)

        # As behind a server: an unhandled error is the 500 the app rendered, not an exception here.
        transport = httpx.ASGITransport(app=with_state, raise_app_exceptions=False, client=peer)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, state or {}


async def app_client(app: FastAPI, peer: tuple[str, int] = ("127.0.0.1", 123)) -> AsyncIterator[httpx.AsyncClient]:
    """Drives an app in-process, lifespan included, as a client connected from `peer`."""
    async with running_app(app, peer) as (client, _):
        yield client


@pytest.fixture(scope="session")
async def users_client(migrated: Servers) -> AsyncIterator[httpx.AsyncClient]:
    from services.users.app import create_app
    from services.users.settings import UsersSettings

    async for client in app_client(create_app(UsersSettings(**settings_kwargs(migrated, "users")))):
        yield client


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A three-node Redis Cluster of the session's own (`tests.edge_support.PrivateRedisCluster`),
    started the first time a test asks for it."""
    from tests.edge_support import private_redis_cluster  # it imports this module

    with private_redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def stack(migrated: Servers, otlp: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """All five processes as real subprocesses on free ports, on PostgreSQL and Redis, exporting
    their spans to the test's OTLP receiver."""
    env = {
        **service_env(migrated),
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "PYTHONUNBUFFERED": "1",
    }
    running = Stack(
        ports={name: free_port() for name in PROCESSES},
        env=env,
        log_dir=tmp_path_factory.mktemp("stack-logs"),
        cwd=ROOT,
        # No delivery worker: endpoints registered here point at public addresses, which tests must
        # never send to. The delivery tests run workers on databases of their own.
        workers=(),
    )
    try:
        running.start(timeout=60)
        yield running
    finally:
        running.stop()


@pytest.fixture
async def gateway(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url(), timeout=30) as client:
        yield client
