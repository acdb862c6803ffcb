"""A WebSocket is admitted as a request is, by the edge: the same quotas (its route's own included)
and the same failure modes of the rate-limit store, not a path of its own."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from scripts.devstack import Stack, free_port
from tests.conftest import ROOT
from tests.e2e.test_websocket import DEADLINE, ws_url
from tests.edge_support import bearer, private_redis, signup


async def pong(url: str) -> None:
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), DEADLINE)) == {"type": "pong"}


async def test_a_connection_counts_against_its_routes_own_quota(stack, gateway):
    acme = await signup(gateway)
    env = {
        "GATEWAY_RATE_LIMIT_ROUTES": json.dumps({"GET /v1/ws": "2/60s"}),
        "GATEWAY_REDIS_KEY_PREFIX": f"{stack.env['GATEWAY_REDIS_KEY_PREFIX']}{uuid.uuid4().hex[:8]}:",
    }
    own = Stack(ports={**stack.ports, "gateway": free_port()}, env=stack.env, env_for={"gateway": env}, cwd=ROOT)
    own.start_one("gateway")
    try:
        own.wait_ready(60)
        for _ in range(2):
            await pong(ws_url(own.url(), acme.token))
        # The route's quota is spent, the plan's is not: refused before it is accepted, as a request is.
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(own.url(), acme.token)):
                pass
        assert refused.value.response.status_code == 403
        # Another tenant's connections are counted apart.
        await pong(ws_url(own.url(), (await signup(gateway)).token))
    finally:
        own.stop()


async def test_with_the_rate_limit_failing_closed_a_down_redis_says_reconnect_later(stack):
    with private_redis() as redis_server:
        env = {"GATEWAY_REDIS_URL": redis_server.url, "GATEWAY_RATE_LIMIT_FAILURE_MODE": "closed"}
        own = Stack(
            ports={**stack.ports, "gateway": free_port()}, env=stack.env, env_for={"gateway": env}, cwd=ROOT, workers=()
        )
        own.start_one("gateway")
        try:
            own.wait_ready(60)
            token = bearer()["Authorization"].removeprefix("Bearer ")
            redis_server.stop()
            async with connect(ws_url(own.url(), token)) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), DEADLINE)
            # As a request gets 503 EDGE_STORE_UNAVAILABLE: the store is named, the client comes back.
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1013, "EDGE_STORE_UNAVAILABLE")
        finally:
            own.stop()
