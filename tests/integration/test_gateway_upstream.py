"""Upstream failures seen through an in-process gateway: a port that refuses by construction, and
two fault injectors standing in for the users service (one that reads a request and never answers,
one that answers 500 with a body that must not leak). The users service cannot be asked for either;
the same failures of real processes are in test_order_saga_faults.py and test_gateway_faults.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from jose import jwt

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.conftest import INTERNAL_SECRET, JWT_SECRET, app_client
from tests.faults import refused_port


def token() -> str:
    now = int(time.time())
    claims = {
        "sub": str(uuid.uuid4()),
        "tid": str(uuid.uuid4()),
        "scope": "users:read",
        "plan": "pro",
        "iat": now,
        "exp": now + 600,
        "iss": "portico",
    }
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256", headers={"kid": "portico-1"})


async def _serve(handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        # Hanging handlers are cancelled with the server.
        await asyncio.wait_for(server.wait_closed(), 5)


@pytest.fixture
async def hanging_port() -> AsyncIterator[int]:
    """Fault injector: a users service that reads the request and never answers."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(65536)
            await asyncio.sleep(30)
        finally:
            writer.close()

    async for port in _serve(handler):
        yield port


@pytest.fixture
async def failing_port() -> AsyncIterator[int]:
    """Fault injector: a users service that answers 500 with internals in the body."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"detail": "internal stack trace that must not leak"}'
        writer.write(
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
        )
        await writer.drain()
        writer.close()

    async for port in _serve(handler):
        yield port


# Both upstream transports must map failures the same way.
pytestmark = pytest.mark.parametrize("transport", ["aiohttp", "httpx"])


@contextlib.asynccontextmanager
async def gateway_for(users_port: int, transport: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = GatewaySettings(
        environment="test",
        internal_token_secret=INTERNAL_SECRET,
        jwt_secret=JWT_SECRET,
        users_url=f"http://127.0.0.1:{users_port}",
        http_timeout_seconds=0.5,
        http_transport=transport,
        access_log=False,
    )
    clients = app_client(create_app(settings))
    try:
        yield await anext(clients)
    finally:
        await clients.aclose()


async def get_me(users_port: int, transport: str) -> httpx.Response:
    async with gateway_for(users_port, transport) as client:
        return await client.get("/v1/users/me", headers={"Authorization": f"Bearer {token()}"})


async def test_unreachable_service_is_503_naming_it(transport):
    with refused_port() as port:
        response = await get_me(port, transport)
    assert response.status_code == 503
    body = response.json()
    assert body["error_code"] == "DOWNSTREAM_UNAVAILABLE"
    assert body["service"] == "users"


async def test_hanging_service_is_504_naming_it(hanging_port, transport):
    # Answered while the service still hangs: the gateway's own timeout gave up on it.
    response = await get_me(hanging_port, transport)
    assert response.status_code == 504
    assert response.json()["error_code"] == "DOWNSTREAM_TIMEOUT"
    assert response.json()["service"] == "users"


async def test_failing_service_is_502_without_its_internals(failing_port, transport):
    response = await get_me(failing_port, transport)
    assert response.status_code == 502
    body = response.json()
    assert body["error_code"] == "DOWNSTREAM_BAD_RESPONSE"
    assert body["service"] == "users"
    assert "stack trace" not in response.text


async def test_ready_is_503_naming_what_is_down(transport):
    with refused_port() as port:
        async with gateway_for(port, transport) as client:
            response = await client.get("/health/ready")
            assert response.status_code == 503
            body = response.json()
            assert body["checks"]["users"] != "ok"
            assert "users" in body["detail"]
            live = await client.get("/health/live")
            assert live.status_code == 200
