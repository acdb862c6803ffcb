"""What /v1/ws does with a message over the limit when no server in front of the app bounds it (the
app served some other way than `python -m gateway`): driven in-process at the ASGI level, where
messages of any length reach the app."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.types import Message

from gateway.app import create_app
from shared.contract import WEBSOCKET_MAX_MESSAGE_BYTES
from tests.conftest import running_app
from tests.edge_support import bearer, gateway_settings, ws_scope

DEADLINE = 10.0
LIMIT = WEBSOCKET_MAX_MESSAGE_BYTES


@pytest.mark.parametrize(
    "too_big",
    [
        {"text": "x" * (LIMIT + 1)},
        {"text": "é" * (LIMIT // 2 + 1)},  # fewer characters than the limit, more bytes
        {"bytes": b"\0" * (LIMIT + 1)},
    ],
    ids=["text", "text-in-utf-8-bytes", "binary"],
)
async def test_a_message_over_the_limit_is_not_parsed_and_closes_the_connection_with_1009(stack, too_big):
    app = create_app(gateway_settings(stack))
    async with running_app(app) as (_, state):
        token = bearer()["Authorization"].removeprefix("Bearer ")
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        outbox: asyncio.Queue[Message] = asyncio.Queue()

        async def answer() -> Message:
            return await asyncio.wait_for(outbox.get(), DEADLINE)

        await inbox.put({"type": "websocket.connect"})
        running = asyncio.create_task(app(ws_scope(token, state), inbox.get, outbox.put))
        try:
            assert (await answer())["type"] == "websocket.accept"
            # A ping as long as the limit is read.
            short = json.dumps({"type": "ping", "pad": ""})
            padded = json.dumps({"type": "ping", "pad": "x" * (LIMIT - len(short))})
            await inbox.put({"type": "websocket.receive", "text": padded})
            assert await answer() == {"type": "websocket.send", "text": '{"type":"pong"}'}
            await inbox.put({"type": "websocket.receive", **too_big})
            closed = await answer()
            assert closed["type"] == "websocket.close"
            assert closed["code"] == 1009
        finally:
            await inbox.put({"type": "websocket.disconnect", "code": 1000})
            await asyncio.wait_for(running, DEADLINE)
