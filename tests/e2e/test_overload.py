"""Overload on real processes: a service held at its limit refuses at once while its probes stay
green; the gateway sheds free callers before enterprise ones; a client that leaves cancels the
gateway's call to the service (`shared/admission.py`, `gateway/edge/admission.py`).

Each limit here is forced by settings (minimum = initial = maximum), so what is tested is the rule,
not how the limit adapts on a loaded machine."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from scripts.devstack import Stack, free_port
from shared.contract import IDENTITY_HEADER
from shared.identity_token import IdentitySigner
from tests.aggregate_support import ScriptedService, answer_json, eventually, metric
from tests.conftest import ROOT, service_env
from tests.edge_support import bearer
from tests.faults import eventually as eventually_async
from tests.infra import Servers
from tests.orders_support import tenant_identity


def fixed_limit(prefix: str, limit: int) -> dict[str, str]:
    """A limit that does not adapt, and no queue: past it, a request is refused at once."""
    return {
        f"{prefix}ADMISSION_ENABLED": "true",
        f"{prefix}ADMISSION_MIN_LIMIT": str(limit),
        f"{prefix}ADMISSION_INITIAL_LIMIT": str(limit),
        f"{prefix}ADMISSION_MAX_LIMIT": str(limit),
        f"{prefix}ADMISSION_QUEUE_SIZE": "0",
    }


@contextlib.contextmanager
def one_process(name: str, env: dict[str, str], log_dir: Path) -> Iterator[Stack]:
    stack = Stack(
        ports={name: free_port()},
        env={"PYTHONUNBUFFERED": "1"},
        env_for={name: env},
        log_dir=log_dir,
        cwd=ROOT,
        workers=(),
    )
    try:
        stack.start_one(name)
        yield stack
    finally:
        stack.stop()


def assert_overloaded(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["error_code"] == "OVERLOADED"
    assert int(response.headers["retry-after"]) >= 1


@contextlib.asynccontextmanager
async def held(port: int, head: str) -> AsyncIterator[None]:
    """A request whose head has arrived and whose body never does: admitted, and in progress until
    its connection closes."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode("latin-1") + b"{")
    await writer.drain()
    try:
        yield
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_service_at_its_limit_refuses_at_once_and_its_probes_stay_green(
    migrated: Servers, signer: IdentitySigner, tmp_path
):
    env = {**service_env(migrated), **fixed_limit("INVENTORY_", 1)}
    with one_process("inventory", env, tmp_path) as stack:
        await asyncio.to_thread(stack.wait_ready, 90, "inventory")
        port = stack.ports["inventory"]
        identity = {IDENTITY_HEADER: signer.sign(tenant_identity(), "inventory")}
        async with httpx.AsyncClient(base_url=stack.url("inventory"), headers=identity, timeout=30) as client:
            assert (await client.get("/products")).status_code == 200
            head = (
                "POST /products HTTP/1.1\r\nHost: inventory\r\nContent-Type: application/json\r\n"
                f"Content-Length: 100\r\n{IDENTITY_HEADER}: {identity[IDENTITY_HEADER]}\r\n\r\n"
            )
            async with held(port, head):

                async def in_progress() -> bool:
                    scraped = (await client.get("/metrics")).text
                    return metric(scraped, "portico_requests_in_progress") == 1.0

                await eventually_async(in_progress)
                assert_overloaded(await client.get("/products"))
                for probe in ("/health/live", "/health/ready"):
                    assert (await client.get(probe)).status_code == 200, probe
                scraped = (await client.get("/metrics")).text
                assert metric(scraped, "portico_requests_shed_total", reason="limit", plan="all") == 1.0
                assert metric(scraped, "portico_concurrency_limit") == 1.0

            # The held request is over: the next one is admitted again.
            async def admitted() -> bool:
                return (await client.get("/products")).status_code == 200

            await eventually_async(admitted)


@pytest.fixture(scope="module")
async def hanging_gateway(
    migrated: Servers, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[str, ScriptedService]]:
    """A gateway process whose services are one scripted service: probes and `GET /products` are
    answered, every other call hangs. Its limit is 4 (free callers may fill half of it), and its
    calls may take a minute, so only a disconnect ends a hanging one early."""

    def script(method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
        if path.startswith("/health/"):
            return answer_json(200, {"status": "ok"})
        if path.startswith("/products"):
            return answer_json(200, {"items": [], "next_cursor": None})
        return None

    service = ScriptedService(script)
    async with service.running():
        env = {
            **service_env(migrated),
            **fixed_limit("GATEWAY_", 4),
            "GATEWAY_ADMISSION_PLAN_SHARES": json.dumps({"anonymous": 0.5, "free": 0.5, "pro": 0.75, "enterprise": 1}),
            "GATEWAY_HTTP_TIMEOUT_SECONDS": "60",
            "GATEWAY_IDEMPOTENCY_LOCK_SECONDS": "120",
            "GATEWAY_ETAG_ENABLED": "false",
            # Calls left hanging at the scripted service need not hold the gateway's stop.
            "GATEWAY_SHUTDOWN_TIMEOUT_SECONDS": "1",
        }
        urls = {f"GATEWAY_{name.upper()}_URL": service.url for name in ("users", "orders", "inventory", "webhooks")}
        with one_process("gateway", {**env, **urls}, tmp_path_factory.mktemp("overload-gateway")) as stack:
            # In a thread: the scripted service answers the gateway's readiness checks from this loop.
            await asyncio.to_thread(stack.wait_ready, 90, "gateway")
            yield stack.url(), service


async def test_a_client_that_leaves_cancels_the_call_to_the_service(hanging_gateway: tuple[str, ScriptedService]):
    url, service = hanging_gateway
    before, gone = service.requests.count(("GET", "/users/me")), service.disconnects
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        call = asyncio.ensure_future(client.get("/v1/users/me", headers=bearer("enterprise")))
        await eventually(lambda: service.requests.count(("GET", "/users/me")) == before + 1)
        call.cancel()  # the client closes its connection, with the service's answer still to come
        with contextlib.suppress(asyncio.CancelledError):
            await call
        # The gateway closed its connection to the service (the service saw its peer go), well before
        # the gateway's own timeout of a minute.
        await eventually(lambda: service.disconnects == gone + 1)


async def test_the_gateway_sheds_free_callers_before_enterprise_ones(hanging_gateway: tuple[str, ScriptedService]):
    url, service = hanging_gateway
    enterprise, free = bearer("enterprise"), bearer("free")
    before = service.requests.count(("GET", "/users/me"))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        # Two enterprise requests held at the service: half the limit, all that free callers may fill.
        holding = [asyncio.ensure_future(client.get("/v1/users/me", headers=enterprise)) for _ in range(2)]
        try:
            await eventually(lambda: service.requests.count(("GET", "/users/me")) == before + 2)
            assert_overloaded(await client.get("/v1/products", headers=free))
            assert_overloaded(await client.get("/v1/products"))  # anonymous: the same share as free
            admitted = await client.get("/v1/products", headers=enterprise)
            assert admitted.status_code == 200, admitted.text
            assert (await client.get("/health/ready")).status_code == 200
            scraped = (await client.get("/metrics")).text
            assert metric(scraped, "portico_requests_shed_total", reason="limit", plan="free") == 1.0
            assert metric(scraped, "portico_requests_shed_total", reason="limit", plan="anonymous") == 1.0
            assert metric(scraped, "portico_requests_shed_total", reason="limit", plan="enterprise") is None
        finally:
            for call in holding:
                call.cancel()
            await asyncio.gather(*holding, return_exceptions=True)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a Content-Length, read off a raw connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines if line)
    answer_headers = {name.lower(): value for name, value in fields.items()}
    body = await reader.readexactly(int(answer_headers["content-length"]))
    return int(status_line.split(" ")[1]), answer_headers, body


async def test_a_shed_request_leaves_its_connection_ready_for_the_next(
    hanging_gateway: tuple[str, ScriptedService],
):
    """Refused from its head alone, a request without a body leaves its keep-alive connection to
    what follows it, pipelined requests included, in order; one with a body is answered and its
    connection closed, its body never read into anything."""
    url, service = hanging_gateway
    enterprise, free = bearer("enterprise"), bearer("free")
    port = int(url.rsplit(":", 1)[1])
    before = service.requests.count(("GET", "/users/me"))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        holding = [asyncio.ensure_future(client.get("/v1/users/me", headers=enterprise)) for _ in range(2)]
        try:
            await eventually(lambda: service.requests.count(("GET", "/users/me")) == before + 2)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                refused = f"GET /v1/products HTTP/1.1\r\nHost: gateway\r\nAuthorization: {free['Authorization']}\r\n"
                ready = b"GET /health/ready HTTP/1.1\r\nHost: gateway\r\n\r\n"
                authorization = enterprise["Authorization"]
                admitted = f"GET /v1/products HTTP/1.1\r\nHost: gateway\r\nAuthorization: {authorization}\r\n\r\n"
                # Pipelined: the refusal, a probe and an enterprise request in one write.
                writer.write(refused.encode() + b"X-Request-ID: client-chosen-id\r\n\r\n" + ready + admitted.encode())
                await writer.drain()
                status, headers, payload = await read_answer(reader)
                assert status == 503
                assert headers["content-type"] == "application/problem+json"
                assert headers["retry-after"] == "1"
                problem = json.loads(payload)
                assert problem["error_code"] == "OVERLOADED"
                assert problem["request_id"] == headers["x-request-id"] == "client-chosen-id"
                assert headers["x-content-type-options"] == "nosniff"
                assert "connection" not in headers
                assert (await read_answer(reader))[0] == 200
                assert (await read_answer(reader))[0] == 200
                # With a body: the refusal, then the connection closes; what follows is not served.
                body = b'{"sku": "S-1", "name": "shed", "price_cents": 100, "stock": 1}'
                post = (
                    f"POST /v1/products HTTP/1.1\r\nHost: gateway\r\nAuthorization: {free['Authorization']}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode()
                writer.write(post + body + ready)
                await writer.drain()
                status, headers, _ = await read_answer(reader)
                assert status == 503
                assert headers["connection"] == "close"
                assert await asyncio.wait_for(reader.read(), 30) == b""
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
            scraped = (await client.get("/metrics")).text
            assert metric(scraped, "portico_requests_shed_total", reason="limit", plan="free") is not None
        finally:
            for call in holding:
                call.cancel()
            await asyncio.gather(*holding, return_exceptions=True)
    assert ("POST", "/products") not in service.requests
