"""Fixtures of the aggregate, resilience and real-time tests: processes of their own, which tests may
freeze, kill and restart without touching the session's stack."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scripts.devstack import Stack, free_port
from tests.aggregate_support import gateway_on, services_stack
from tests.conftest import ROOT
from tests.edge_support import PrivateRedis, Tenant, private_redis, signup
from tests.infra import Servers


@pytest.fixture(scope="session")
def services(migrated: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The users, orders and inventory services, started the first time a test asks for them."""
    with services_stack(migrated, tmp_path_factory.mktemp("aggregate-services")) as stack:
        yield stack


@pytest.fixture(scope="session")
async def services_tenant(services: Stack) -> Tenant:
    """A tenant and its admin on `services`."""
    async with gateway_on(services) as gateway:
        return await signup(gateway)


@pytest.fixture
def gateway_on_private_redis(stack: Stack) -> Iterator[tuple[str, PrivateRedis]]:
    """A gateway of the test's own on a Redis of the test's own, which the test may stop."""
    with private_redis() as redis_server:
        own = Stack(
            ports={**stack.ports, "gateway": free_port()},
            env=stack.env,
            env_for={"gateway": {"GATEWAY_REDIS_URL": redis_server.url}},
            cwd=ROOT,
            workers=(),
        )
        own.start_one("gateway")
        try:
            own.wait_ready(60)
            yield own.url(), redis_server
        finally:
            own.stop()
