"""A service whose PostgreSQL connection is really cut answers 503 DATABASE_UNAVAILABLE, and recovers
by itself when the database is back.

Each service runs in-process on its session database, reached through `tests.faults.TcpProxy`: a
byte-for-byte proxy that can abort every open connection and refuse new ones (the pooled connections
die under the service, as when the database restarts or the network drops).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

from shared.contract import ROLE_SCOPES, Identity
from shared.identity_token import IdentitySigner
from tests.conftest import app_client, internal_headers, settings_kwargs
from tests.faults import TcpProxy
from tests.infra import Servers
from tests.orders_support import SMALL_POOL, assert_problem

# A read of each service that goes to its database.
READS = {"users": "/api-keys", "inventory": "/products", "orders": "/orders", "webhooks": "/endpoints"}


def build(migrated: Servers, service: str, database_url: str) -> FastAPI:
    kwargs = {**settings_kwargs(migrated, service), "database_url": database_url, **SMALL_POOL}
    if service == "users":
        from services.users.app import create_app as users_app
        from services.users.settings import UsersSettings

        return users_app(UsersSettings(**kwargs))
    if service == "inventory":
        from services.inventory.app import create_app as inventory_app
        from services.inventory.settings import InventorySettings

        return inventory_app(InventorySettings(**kwargs))
    if service == "orders":
        from services.orders.app import create_app as orders_app
        from services.orders.settings import OrdersSettings

        return orders_app(OrdersSettings(**kwargs, recovery_enabled=False))
    from services.webhooks.app import create_app as webhooks_app
    from services.webhooks.settings import WebhooksSettings

    return webhooks_app(WebhooksSettings(**kwargs, relay_enabled=False))


@pytest.fixture
async def proxy(migrated: Servers) -> AsyncIterator[TcpProxy]:
    pg = urlsplit(migrated.pg_admin_dsn)
    async with TcpProxy((pg.hostname or "127.0.0.1", pg.port or 5432)) as running:
        yield running


def through(url: str, port: int) -> str:
    """`url` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
    return parts._replace(netloc=netloc).geturl()


@pytest.mark.parametrize("service", list(READS))
async def test_a_cut_database_connection_is_503_until_it_comes_back(
    migrated: Servers, signer: IdentitySigner, proxy: TcpProxy, service: str
):
    identity = Identity(
        subject=str(uuid.uuid4()), tenant_id=str(uuid.uuid4()), scopes=ROLE_SCOPES["admin"], plan="pro", role="admin"
    )
    headers = internal_headers(signer, service, identity)
    app = build(migrated, service, through(migrated.database_url(service), proxy.port))
    async for client in app_client(app):
        # Working: the pool holds open connections through the proxy.
        ok = await client.get(READS[service], headers=headers)
        assert ok.status_code == 200, ok.text
        assert (await client.get("/health/ready")).status_code == 200

        proxy.cut()
        for _ in range(2):  # the pooled connection that died, then a new one refused
            down = await client.get(READS[service], headers=headers)
            body = assert_problem(down, 503, "DATABASE_UNAVAILABLE")
            assert down.headers["retry-after"] == "1"
            assert "127.0.0.1" not in body["detail"]
        assert (await client.get("/health/ready")).status_code == 503

        proxy.restore()
        back = await client.get(READS[service], headers=headers)
        assert back.status_code == 200, back.text
        assert (await client.get("/health/ready")).status_code == 200


async def test_the_proxy_refuses_while_cut(proxy: TcpProxy):
    """The fault injector itself: while cut, a connection is accepted and closed at once."""
    proxy.cut()
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"http://127.0.0.1:{proxy.port}/")
