"""/v1/ws with every process real: credentials checked before the connection is accepted, events as
JSON frames with the ids SSE and the orders feed use, ping/pong (anything else an error message),
1008 when the token expires, 1009 for a message over the limit and 1013 when the gateway stops."""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from jose import jwt
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from scripts.devstack import Stack, free_port
from shared.contract import WEBSOCKET_MAX_MESSAGE_BYTES, new_api_key
from tests.conftest import JWT_SECRET, ROOT
from tests.e2e.test_realtime import EXPIRY_MARGIN_SECONDS, answered_at, place_and_cancel, reading, until
from tests.edge_support import Tenant, signup

DEADLINE = 30.0


def ws_url(http_url: str, token: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"token": token, **params}.items())
    return http_url.replace("http://", "ws://", 1) + f"/v1/ws?{query}"


async def frames(ws: ClientConnection, count: int) -> list[dict]:
    got = []
    while len(got) < count:
        got.append(json.loads(await asyncio.wait_for(ws.recv(), DEADLINE)))
    return got


def short_token(tenant: Tenant, seconds: int) -> tuple[str, int]:
    """An access token of the tenant's admin that expires in `seconds` (at most one less), and its `exp`."""
    now = int(time.time())
    claims = {
        "sub": tenant.admin_id,
        "tid": tenant.id,
        "scope": "orders:read",
        "plan": tenant.plan,
        "role": "member",
        "iat": now,
        "exp": now + seconds,
        "iss": "portico",
    }
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256", headers={"kid": "portico-1"}), now + seconds


async def test_bad_credentials_are_refused_before_the_connection_is_accepted(stack, gateway):
    acme = await signup(gateway)
    products_only = await gateway.post(
        "/v1/api-keys", json={"name": "p", "scopes": ["products:read"]}, headers=acme.auth
    )
    assert products_only.status_code == 201, products_only.text
    url = stack.url()
    for bad in (
        url.replace("http://", "ws://") + "/v1/ws",  # no token
        ws_url(url, "not-a-token"),
        ws_url(url, "sk_" + "x" * 40),  # the shape of a key, but none
        ws_url(url, products_only.json()["api_key"]),  # no orders:read
        ws_url(url, acme.token, last_event_id="abc"),
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(bad):
                pass
        assert refused.value.response.status_code == 403


async def test_events_arrive_as_frames_with_the_ids_of_the_stream(stack, gateway):
    acme = await signup(gateway)
    key = await gateway.post("/v1/api-keys", json={"name": "ws", "scopes": ["orders:read"]}, headers=acme.auth)
    async with (
        connect(ws_url(stack.url(), acme.token)) as by_token,
        connect(ws_url(stack.url(), key.json()["api_key"])) as by_key,
        reading(stack.url(), acme.auth) as sse,
    ):
        await by_token.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(by_token.recv(), DEADLINE)) == {"type": "pong"}
        placed = await place_and_cancel(gateway, acme, 1)
        token_frames, key_frames = await frames(by_token, 2), await frames(by_key, 2)
        await until(lambda: len(sse.events) >= 2, "the SSE stream")
    assert token_frames == key_frames
    assert [f["type"] for f in token_frames] == ["order.created", "order.cancelled"]
    assert all(set(f) == {"id", "type", "data"} for f in token_frames)
    assert token_frames[0]["data"]["data"]["id"] == placed[0]
    assert token_frames[0]["data"]["type"] == "order.created"
    assert [f["id"] for f in token_frames] == sse.ids
    # Resuming on a WebSocket works as on SSE.
    async with connect(ws_url(stack.url(), acme.token, last_event_id=str(token_frames[0]["id"]))) as resumed:
        assert await frames(resumed, 1) == token_frames[1:]


async def test_a_last_event_id_this_api_never_sent_is_refused_before_the_connection_is_accepted(stack, gateway):
    acme = await signup(gateway)
    for bad in (
        "9" * 5000,  # more digits than Python's int() reads (4,300)
        "99999999999",  # a number, but past every event ever written
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(stack.url(), acme.token, last_event_id=bad)):
                pass
        assert refused.value.response.status_code == 403


async def test_anything_but_a_ping_is_answered_with_an_error_and_the_connection_goes_on(stack, gateway):
    acme = await signup(gateway)
    async with connect(ws_url(stack.url(), acme.token)) as ws:
        for message in (
            b"\x00binary",
            "[" * 2000,  # nested deeper than the JSON parser goes
            "not json",
            json.dumps({"type": "pong"}),
        ):
            await ws.send(message)
            answer = json.loads(await asyncio.wait_for(ws.recv(), DEADLINE))
            assert answer["type"] == "error", (message[:10], answer)
            assert answer["detail"]
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), DEADLINE)) == {"type": "pong"}


def text_frame_head(length: int) -> bytes:
    """The head of a client's (masked) text frame announcing `length` bytes, and its masking key."""
    return bytes([0x81, 0x80 | 127]) + struct.pack("!Q", length) + os.urandom(4)


async def test_a_message_over_the_limit_closes_the_connection_with_1009_before_it_is_read(gateway, own_gateway):
    """Clients send pings: a message longer than the limit closes the connection with 1009 as soon as
    its frame's head says how long it is, so the gateway never holds more of it (uvicorn's default
    limit, 16 MiB, each message held whole before the app sees it, let five clients take a gateway
    to gigabytes). Served by one process, and by workers under a master."""
    acme = await signup(gateway)
    async with connect(ws_url(own_gateway.url(), acme.token)) as ws:
        # A message of the limit is read (a ping, padded).
        short = json.dumps({"type": "ping", "pad": ""})
        padded = json.dumps({"type": "ping", "pad": "x" * (WEBSOCKET_MAX_MESSAGE_BYTES - len(short))})
        assert len(padded.encode()) == WEBSOCKET_MAX_MESSAGE_BYTES
        await ws.send(padded)
        assert json.loads(await asyncio.wait_for(ws.recv(), DEADLINE)) == {"type": "pong"}
        # The head of a 16 MiB message and the start of it: the rest never comes.
        ws.transport.write(text_frame_head(16 * 1024 * 1024) + b"x" * 1024)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), DEADLINE)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009
    async with connect(ws_url(own_gateway.url(), acme.token)) as again:
        await again.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(again.recv(), DEADLINE)) == {"type": "pong"}


async def test_the_connection_closes_with_1008_when_its_token_expires(stack, gateway):
    acme = await signup(gateway)
    token, expires_at = short_token(acme, 4)
    async with connect(ws_url(stack.url(), token)) as ws:
        control = asyncio.create_task(answered_at(gateway, expires_at))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), DEADLINE)
        closed_at = time.time()
        answered = await control
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    # Not before the token expired, and about when a request sent then was answered.
    assert closed_at >= expires_at, (closed_at, expires_at)
    assert closed_at <= answered + EXPIRY_MARGIN_SECONDS, (closed_at, answered)


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def own_gateway(stack: Stack, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A gateway of the test's own: one process, or a master with two workers."""
    own = Stack(
        ports={**stack.ports, "gateway": free_port()},
        env=stack.env,
        env_for={"gateway": {"GATEWAY_WORKERS": str(request.param)}},
        cwd=ROOT,
        workers=(),
    )
    own.start_one("gateway")
    try:
        own.wait_ready(60)
        yield own
    finally:
        own.stop()


async def test_the_connection_closes_with_1013_when_the_gateway_stops(gateway, own_gateway):
    acme = await signup(gateway)
    async with connect(ws_url(own_gateway.url(), acme.token)) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), DEADLINE)) == {"type": "pong"}
        stopping = asyncio.get_running_loop().run_in_executor(None, own_gateway.stop_one, "gateway")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), DEADLINE)
        await stopping
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1013


async def test_refused_credentials_spend_the_addresss_failure_budget(stack, gateway):
    """As on HTTP: bad credentials count against the client address, past its budget they are refused
    as such, and a token that verifies is never held up (a gateway of its own, under a key prefix of
    its own, so no other test's address is affected)."""
    acme = await signup(gateway)
    env = {
        "GATEWAY_AUTH_FAILURE_LIMIT": "3/60s",
        "GATEWAY_REDIS_KEY_PREFIX": f"{stack.env['GATEWAY_REDIS_KEY_PREFIX']}{uuid.uuid4().hex[:8]}:",
    }
    strict = Stack(
        ports={**stack.ports, "gateway": free_port()}, env=stack.env, env_for={"gateway": env}, cwd=ROOT, workers=()
    )
    strict.start_one("gateway")
    try:
        strict.wait_ready(60)
        for bad in ("not-a-token", "not-a-token", "sk_" + "x" * 40, "not-a-token", "sk_" + "y" * 40):
            with pytest.raises(InvalidStatus):
                async with connect(ws_url(strict.url(), bad)):
                    pass
        # Five failures counted; the last two came past the budget of three and were refused as such.
        metrics = httpx.get(strict.url() + "/metrics").text
        assert re.search(r'^gateway_auth_failures_total\{outcome="failed"\} 5\.0$', metrics, re.M), metrics
        assert re.search(r'^gateway_auth_failures_total\{outcome="refused"\} 2\.0$', metrics, re.M), metrics
        async with connect(ws_url(strict.url(), acme.token)) as ws:
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), DEADLINE)) == {"type": "pong"}
    finally:
        strict.stop()


class AnswersFiveHundred(BaseHTTPRequestHandler):
    """A users service stand-in in the middle of a blip: every request (the key lookup is a POST) fails."""

    def do_POST(self) -> None:
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def gateway_with_failing_users(stack: Stack) -> Iterator[str]:
    """A gateway of the test's own whose users service answers 500 to everything."""
    users = ThreadingHTTPServer(("127.0.0.1", 0), AnswersFiveHundred)
    threading.Thread(target=users.serve_forever, daemon=True).start()
    own = Stack(
        ports={**stack.ports, "gateway": free_port()},
        env=stack.env,
        env_for={"gateway": {"GATEWAY_USERS_URL": f"http://127.0.0.1:{users.server_port}"}},
        cwd=ROOT,
        workers=(),
    )
    own.start_one("gateway")
    try:
        # Not ready (its users service fails), but alive.
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(own.url() + "/health/live", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.2)
        yield own.url()
    finally:
        own.stop()
        users.shutdown()
        users.server_close()


async def test_the_connection_closes_with_1013_when_the_users_service_cannot_resolve_the_key(
    gateway_with_failing_users,
):
    async with connect(ws_url(gateway_with_failing_users, new_api_key())) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), DEADLINE)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1013


async def test_the_connection_closes_with_1013_when_redis_fails(gateway, gateway_on_private_redis):
    url, redis_server = gateway_on_private_redis
    acme = await signup(gateway)
    async with connect(ws_url(url, acme.token)) as ws:
        await place_and_cancel(gateway, acme, 1)
        assert [f["type"] for f in await frames(ws, 2)] == ["order.created", "order.cancelled"]
        redis_server.stop()
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), DEADLINE)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1013
    # A connection made while Redis is down is told the same.
    async with connect(ws_url(url, acme.token)) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), DEADLINE)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1013
