"""The process's pool sends each call once: a service that reads a request and drops the connection
without answering gets no second copy from the transport itself. Retries are `shared/calls.py`'s
alone, by its rules and budgets (tests/unit/test_service_client.py)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

from shared.pool import create_http_pool
from shared.settings import ProcessSettings


class Dropping:
    """Reads each request, head and body, counts it, and closes the connection without answering
    (an instance killed mid-request)."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.url = ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next(
                (int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), 0
            )
            await reader.readexactly(length)
            self.received.append(lines[0].split(" ", 1)[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Dropping]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()


def test_aiohttp_still_reads_the_switch_the_pool_turns_off():
    # A private attribute (aiohttp has no public switch): were it renamed, setting it would silently
    # change nothing.
    assert "_retry_connection" in aiohttp.ClientSession.ATTRS
    read = "self._retry_connection and method in IDEMPOTENT_METHODS"
    assert read in inspect.getsource(aiohttp.ClientSession._request)


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "POST"])
async def test_a_dropped_call_reaches_the_service_once(method):
    pool = create_http_pool(ProcessSettings(http_transport="aiohttp"), TracerProvider())
    try:
        assert pool.session is not None
        async with Dropping().running() as service:
            with pytest.raises(httpx.TransportError):
                await pool.client.request(method, f"{service.url}/things/1", content=b"{}")
            assert service.received == [method]
            # The gateway's forwarded calls use the session itself.
            with pytest.raises(aiohttp.ClientError):
                async with pool.session.request(method, f"{service.url}/things/1", data=b"{}") as answer:
                    await answer.read()
            assert service.received == [method, method]
    finally:
        await pool.aclose()
