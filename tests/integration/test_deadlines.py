"""Deadlines (`X-Request-Deadline`, `shared/admission.py`): a service refuses work whose deadline has
passed before any SQL statement, and the orders saga starts no step past it.

The orders service runs in-process on the session's PostgreSQL; the users and inventory services it
calls are scripted sockets that record what they were asked. Statements are counted by a SQLAlchemy
hook on every engine."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.engine import Engine

from services.orders.app import create_app
from services.orders.settings import OrdersSettings
from shared.contract import IDENTITY_HEADER
from shared.identity_token import IdentitySigner
from tests.aggregate_support import ScriptedService, answer_json
from tests.conftest import app_client, settings_kwargs
from tests.edge_support import bearer, gateway_settings, in_process_gateway
from tests.infra import Servers
from tests.orders_support import tenant_identity

ORDER = {"items": [{"product_id": "p-1", "quantity": 1}]}
RESERVE = ("POST", "/reservations")


@contextlib.contextmanager
def counted_statements() -> Iterator[list[str]]:
    """Every SQL statement any engine of this process runs while the block is open."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


@contextlib.asynccontextmanager
async def orders_app(
    migrated: Servers, users: ScriptedService, inventory: ScriptedService
) -> AsyncIterator[httpx.AsyncClient]:
    settings = OrdersSettings(**settings_kwargs(migrated, "orders"), users_url=users.url, inventory_url=inventory.url)
    async for client in app_client(create_app(settings)):
        yield client


def headers(signer: IdentitySigner, deadline: float) -> dict[str, str]:
    return {
        IDENTITY_HEADER: signer.sign(tenant_identity(), "orders"),
        "X-Request-Deadline": f"{deadline:.3f}",
    }


async def test_a_passed_deadline_is_refused_before_any_sql(migrated: Servers, signer: IdentitySigner):
    users = ScriptedService(lambda method, path: answer_json(200, {"id": "u-1", "credit_limit_cents": 100_000}))
    inventory = ScriptedService(lambda method, path: answer_json(409, {"error_code": "INSUFFICIENT_STOCK"}))
    async with users.running(), inventory.running(), orders_app(migrated, users, inventory) as client:
        with counted_statements() as statements:
            listed = await client.get("/orders", headers=headers(signer, time.time() + 30))
        assert listed.status_code == 200, listed.text
        assert statements, "the hook counts the statements of a request that runs"

        past = time.time() - 0.001
        with counted_statements() as statements:
            refused = [
                await client.get("/orders", headers=headers(signer, past)),
                await client.post("/orders", json=ORDER, headers=headers(signer, past)),
            ]
        for response in refused:
            assert response.status_code == 504, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["error_code"] == "DEADLINE_EXCEEDED"
        assert statements == []
        assert users.requests == []
        assert RESERVE not in inventory.requests

        scraped = (await client.get("/metrics")).text
        assert 'portico_requests_shed_total{plan="all",reason="deadline"} 2.0' in scraped


async def test_the_order_saga_starts_no_step_past_the_deadline(migrated: Servers, signer: IdentitySigner):
    # The user check answers after the deadline: the call is given up at the deadline, and the
    # reservation, the next step, is never asked for.
    users = ScriptedService(
        lambda method, path: answer_json(200, {"id": "u-1", "credit_limit_cents": 100_000}), delay=2.0
    )
    inventory = ScriptedService(lambda method, path: answer_json(201, {}))
    async with users.running(), inventory.running(), orders_app(migrated, users, inventory) as client:
        response = await client.post("/orders", json=ORDER, headers=headers(signer, time.time() + 0.5))
        assert response.status_code == 504, response.text
        assert users.requests == [("GET", "/users/me")]
        # (The app's recovery task may confirm reservations of other tests' orders meanwhile.)
        assert RESERVE not in inventory.requests


async def test_the_gateway_sends_each_service_the_time_it_will_wait():
    heads: list[bytes] = []

    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                body = b'{"id": "u-1", "email": "a@example.com", "role": "admin", "tenant_id": "t-1"}'
                head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
                writer.write(head.encode() + body)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(recording, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    services = {f"{name}_url": url for name in ("users", "orders", "inventory", "webhooks")}
    try:
        settings = gateway_settings(None, http_timeout_seconds=7.0, **services)
        async with in_process_gateway(settings) as gateway:
            sent = time.time()
            response = await gateway.get("/v1/users/me", headers=bearer("pro"))
            assert response.status_code == 200, response.text
    finally:
        server.close()
    (head,) = [h for h in heads if h.startswith(b"GET /users/me ")]
    deadlines = [
        line for line in head.decode("latin-1").split("\r\n") if line.lower().startswith("x-request-deadline:")
    ]
    assert len(deadlines) == 1, head
    deadline = float(deadlines[0].split(":", 1)[1])
    assert sent < deadline <= time.time() + 7.0
    assert deadlines[0].split(":", 1)[1].strip().split(".")[1].isdigit()  # milliseconds
