"""The process's one pooled client calls services for every caller, so nothing one answer sets may
ride along on the next caller's request: a `Set-Cookie` from a service is never kept, by httpx's
client or by the aiohttp session under it. A real server on a socket, both transports."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider

from shared.pool import create_http_client
from shared.settings import ProcessSettings


@pytest.fixture
async def service() -> AsyncIterator[tuple[str, list[str | None]]]:
    """Answers `/login` with a session cookie and records the Cookie header of every request."""
    seen: list[str | None] = []

    async def login(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.json_response({"user": "a"})
        response.set_cookie("session", "user-a", path="/")
        return response

    async def me(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        return web.json_response({"user": "b"})

    app = web.Application()
    app.router.add_post("/login", login)
    app.router.add_get("/me", me)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_cookie_one_answer_sets_is_never_sent_again(service, transport):
    url, seen = service
    client = create_http_client(ProcessSettings(http_transport=transport), TracerProvider())
    try:
        first = await client.post(f"{url}/login")
        assert first.status_code == 200
        assert "session=user-a" in first.headers["set-cookie"]
        # Another caller's request, through the same client and (kept alive) connection.
        second = await client.get(f"{url}/me")
        assert second.status_code == 200
        assert seen == [None, None]
        assert not client.cookies
    finally:
        await client.aclose()
