"""The process's pool sends each call once: a service that reads a request and drops the connection
without answering gets no second copy from the transport itself. Retries are `shared/calls.py`'s
alone, by its rules and budgets (tests/unit/test_service_client.py)."""

from __future__ import annotations

import inspect

import aiohttp
import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

from shared.pool import create_http_pool
from shared.settings import ProcessSettings
from tests.aggregate_support import DROP, ScriptedService


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
        async with ScriptedService(lambda method, path: DROP).running() as service:
            with pytest.raises(httpx.TransportError):
                await pool.client.request(method, f"{service.url}/things/1", content=b"{}")
            assert service.requests == [(method, "/things/1")]
            # The gateway's forwarded calls use the session itself.
            with pytest.raises(aiohttp.ClientError):
                async with pool.session.request(method, f"{service.url}/things/1", data=b"{}") as answer:
                    await answer.read()
            assert service.requests == [(method, "/things/1")] * 2
    finally:
        await pool.aclose()
