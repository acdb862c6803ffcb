"""The gateway's API reference: `/docs` and `/redoc` work offline, `/openapi.json` is a valid document."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from urllib.parse import urljoin

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.conftest import INTERNAL_SECRET, JWT_SECRET, app_client

# Every URL a page names: attributes, and the quoted URLs of its inline script.
_URL = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
async def gateway_app() -> AsyncIterator[httpx.AsyncClient]:
    settings = GatewaySettings(
        environment="test", internal_token_secret=INTERNAL_SECRET, jwt_secret=JWT_SECRET, access_log=False
    )
    clients = app_client(create_app(settings))
    try:
        yield await anext(clients)
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await anext(clients)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_only_what_the_gateway_serves(gateway_app: httpx.AsyncClient, page: str) -> None:
    response = await gateway_app.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    # Nothing from another origin: no absolute or protocol-relative URL anywhere in the page.
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]", html, re.IGNORECASE), html
    urls = {attr or script for attr, script in _URL.findall(html)}
    assert any(url.endswith(".js") for url in urls), urls
    assert "/openapi.json" in urls
    for url in sorted(urls):
        assert url.startswith("/"), url
        assert not url.startswith("//"), url
        asset = await gateway_app.get(urljoin(str(response.url), url))
        assert asset.status_code == 200, url
        assert asset.content, url
    # The page's scripts may run, but only what came from the gateway itself.
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "http" not in csp


async def test_docs_assets_have_their_types(gateway_app: httpx.AsyncClient) -> None:
    js = await gateway_app.get("/docs/assets/swagger-ui-bundle.js")
    css = await gateway_app.get("/docs/assets/swagger-ui.css")
    redoc = await gateway_app.get("/docs/assets/redoc.standalone.js")
    assert "javascript" in js.headers["content-type"]
    assert "SwaggerUIBundle" in js.text
    assert css.headers["content-type"].startswith("text/css")
    assert "javascript" in redoc.headers["content-type"]
    assert "Redoc" in redoc.text
    missing = await gateway_app.get("/docs/assets/nothing.js")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


async def test_production_serves_no_docs() -> None:
    settings = GatewaySettings(
        environment="production", internal_token_secret=INTERNAL_SECRET, jwt_secret=JWT_SECRET, access_log=False
    )
    paths = {getattr(route, "path", None) for route in create_app(settings).routes}
    assert not {"/docs", "/redoc", "/docs/assets", "/openapi.json"} & paths
