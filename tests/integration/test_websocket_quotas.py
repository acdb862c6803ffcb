"""A WebSocket counts against the same quotas as a request, through the edge's one admission path:
its plan's window (the same window as its tenant's requests), its tenant's monthly quota, and the
rate-limit store's failure modes; and it is authenticated by the same rules (`X-Tenant-Id`). Driven
in-process at the ASGI level: the handshake's first answer is what admission decided (accepted, or
closed before it with the error code as reason)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
from starlette.types import Message

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.conftest import running_app
from tests.edge_support import bearer, gateway_settings, private_redis, private_redis_settings, ws_scope

DEADLINE = 10.0
Handshake = Callable[..., Awaitable[Message]]


def token_of(plan: str, tenant_id: str | None = None) -> str:
    return bearer(plan, tenant_id=tenant_id)["Authorization"].removeprefix("Bearer ")


@dataclass(frozen=True)
class Gateway:
    """An in-process gateway: `handshake` with its `/v1/ws`, and `http` for its requests."""

    handshake: Handshake
    http: httpx.AsyncClient


@asynccontextmanager
async def websocket_gateway(settings: GatewaySettings) -> AsyncIterator[Gateway]:
    """An in-process gateway. Its handshake answers the first message the gateway sends to a
    connection with `?token=<token>` (after which the client goes away)."""
    app = create_app(settings)
    async with running_app(app) as (http, state):

        async def handshake(token: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> Message:
            sent: asyncio.Queue[Message] = asyncio.Queue()
            gone = asyncio.Event()
            opened = False

            async def receive() -> Message:
                nonlocal opened
                if not opened:
                    opened = True
                    return {"type": "websocket.connect"}
                await gone.wait()
                return {"type": "websocket.disconnect", "code": 1000}

            running = asyncio.create_task(app(ws_scope(token, state, headers), receive, sent.put))
            try:
                return await asyncio.wait_for(sent.get(), DEADLINE)
            finally:
                gone.set()
                await asyncio.wait_for(running, DEADLINE)

        yield Gateway(handshake, http)


def refused(message: Message) -> str:
    """The error code a connection was refused with before it was accepted."""
    assert message["type"] == "websocket.close", message
    assert message["code"] == 1008
    return str(message["reason"])


async def outcomes(handshake: Handshake, token: str, times: int) -> list[str]:
    """`accepted`, or the error code of the refusal, of `times` connections in a row."""
    answers = [await handshake(token) for _ in range(times)]
    return ["accepted" if a["type"] == "websocket.accept" else refused(a) for a in answers]


async def test_a_connection_counts_against_its_plans_quota(stack):
    settings = gateway_settings(stack, rate_limit_pro="2/60s", rate_limit_free="1/60s")
    async with websocket_gateway(settings) as gateway:
        tenant = token_of("pro")
        assert await outcomes(gateway.handshake, tenant, 3) == ["accepted", "accepted", "RATE_LIMITED"]
        # A free tenant has the free plan's quota; another pro tenant is counted apart.
        assert await outcomes(gateway.handshake, token_of("free"), 2) == ["accepted", "RATE_LIMITED"]
        assert await outcomes(gateway.handshake, token_of("pro"), 1) == ["accepted"]


async def test_a_connection_counts_against_its_tenants_monthly_quota(stack):
    settings = gateway_settings(stack, quota_pro=2)
    async with websocket_gateway(settings) as gateway:
        assert await outcomes(gateway.handshake, token_of("pro"), 3) == ["accepted", "accepted", "QUOTA_EXCEEDED"]


@pytest.mark.parametrize(
    ("mode", "while_down"),
    [
        # `open`: no limit while the store fails.
        ("open", ["accepted", "accepted", "accepted"]),
        # `local`: this process counts the same quota on its own.
        ("local", ["accepted", "accepted", "RATE_LIMITED"]),
    ],
)
async def test_with_the_store_down_a_connection_follows_the_failure_mode(stack, mode, while_down):
    with private_redis() as server:
        settings = private_redis_settings(
            stack,
            server,
            rate_limit_failure_mode=mode,
            rate_limit_pro="2/60s",
        )
        async with websocket_gateway(settings) as gateway:
            assert await outcomes(gateway.handshake, token_of("pro"), 1) == ["accepted"]
            server.stop()  # its socket now refuses at once
            assert await outcomes(gateway.handshake, token_of("pro"), 3) == while_down


async def test_connections_and_requests_count_in_one_window(stack):
    settings = gateway_settings(stack, rate_limit_pro="3/60s")
    async with websocket_gateway(settings) as gateway:
        token = token_of("pro")
        headers = {"Authorization": f"Bearer {token}"}
        assert (await gateway.http.get("/v1/nothing-here", headers=headers)).status_code == 404
        assert await outcomes(gateway.handshake, token, 1) == ["accepted"]
        assert (await gateway.http.get("/v1/nothing-here", headers=headers)).status_code == 404
        # The tenant's third request was the window's last: a connection is refused, and so is a request.
        assert await outcomes(gateway.handshake, token, 1) == ["RATE_LIMITED"]
        assert (await gateway.http.get("/v1/nothing-here", headers=headers)).status_code == 429


async def test_a_connection_naming_another_tenant_is_refused(stack):
    async with websocket_gateway(gateway_settings(stack)) as gateway:
        token = token_of("pro", tenant_id="tenant-a")
        assert refused(await gateway.handshake(token, ((b"x-tenant-id", b"tenant-b"),))) == "TENANT_MISMATCH"
        accepted = await gateway.handshake(token, ((b"x-tenant-id", b"tenant-a"),))
        assert accepted["type"] == "websocket.accept"
