"""Fixtures of the aggregate and resilience tests: service processes of their own, which tests may
freeze, kill and restart without touching the session's stack."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scripts.devstack import Stack
from tests.aggregate_support import gateway_on, services_stack
from tests.edge_support import Tenant, signup
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
