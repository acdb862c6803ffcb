"""The gateway's API reference: `/docs` and `/redoc` work offline, `/openapi.json` is a valid document."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from urllib.parse import urljoin

import httpx
import pytest
from openapi_spec_validator import validate

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


async def test_openapi_document_is_valid_and_complete(gateway_app: httpx.AsyncClient) -> None:
    response = await gateway_app.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    validate(document)
    components = document["components"]
    assert set(components["securitySchemes"]) == {"bearerAuth", "apiKeyAuth"}
    assert "HTTPValidationError" not in components["schemas"]
    operations = {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        if path.startswith("/v1/")
        for method, operation in item.items()
    }
    assert len(operations) >= 28
    for (method, path), operation in operations.items():
        where = f"{method} {path}"
        responses = operation["responses"]
        success = [status for status in responses if status.startswith("2")]
        if method == "GET" and path != "/v1/events":
            assert "ETag" in responses[success[0]]["headers"], where
            assert "304" in responses, where
            assert [p["name"] for p in operation["parameters"] if p["in"] == "header"] == ["If-None-Match"], where
        assert len(success) == 1, where
        assert "X-Request-ID" in responses[success[0]]["headers"], where
        assert "RateLimit" in responses[success[0]]["headers"], where
        if success[0] != "204":
            [(media_type, content)] = responses[success[0]]["content"].items()
            assert media_type in ("application/json", "text/event-stream"), where
            assert content["schema"], where
        for status in ("422", "429", "502", "503"):
            assert status in responses, where
        for status, answer in responses.items():
            if status.startswith(("4", "5")):
                assert list(answer["content"]) == ["application/problem+json"], where
                assert answer["x-error-codes"], where
                examples = answer["content"]["application/problem+json"]["examples"]
                assert {example["value"]["error_code"] for example in examples.values()} == set(answer["x-error-codes"])
        anonymous = path in ("/v1/tenants", "/v1/auth/token")
        assert (operation["security"] == []) is anonymous, where
        needs_credentials = "AUTHENTICATION_REQUIRED" in responses.get("401", {}).get("x-error-codes", [])
        assert needs_credentials is not anonymous, where
        if method in ("POST", "PATCH") and not anonymous:
            assert [p["name"] for p in operation["parameters"] if p["in"] == "header"] == ["Idempotency-Key"], where
            assert "IDEMPOTENCY_KEY_REUSED" in responses["422"]["x-error-codes"], where
        if method in ("POST", "PATCH") and "requestBody" in operation:
            assert "413" in responses, where
    create_order = operations["POST", "/v1/orders"]
    assert create_order["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OrderCreate"
    }
    assert create_order["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OrderOut"
    }
    assert {"INSUFFICIENT_STOCK", "IDEMPOTENCY_KEY_IN_USE"} <= set(create_order["responses"]["409"]["x-error-codes"])
    assert components["schemas"]["OrderCreate"]["examples"]
    token = operations["POST", "/v1/auth/token"]
    assert list(token["requestBody"]["content"]) == ["application/x-www-form-urlencoded"]
    # Routes written by hand (aggregates, the event stream) are documented the same way.
    dashboard = operations["GET", "/v1/users/{user_id}/dashboard"]["responses"]
    assert dashboard["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Dashboard"}
    assert "USER_NOT_FOUND" in dashboard["404"]["x-error-codes"]
    assert "REALTIME_CONNECTION_LIMIT" in operations["GET", "/v1/events"]["responses"]["429"]["x-error-codes"]
    # API keys are managed with a user's token only.
    assert operations["POST", "/v1/api-keys"]["security"] == [{"bearerAuth": []}]
    assert "PLAN_UPGRADE_REQUIRED" in operations["GET", "/v1/webhooks/endpoints"]["responses"]["402"]["x-error-codes"]


def test_the_bodies_the_gateway_documents_are_the_services_own_models() -> None:
    from gateway.openapi import FORM
    from gateway.routes import orders, users
    from services.orders.schemas import OrderCreate
    from services.users.api import router as users_service

    assert OrderCreate in [body.model for body in orders.router.documented_bodies]
    # The users service reads the login form through the very model the gateway documents.
    [form] = [body.model for body in users.router.documented_bodies if body.media_type == FORM]
    [token] = [route for route in users_service.routes if getattr(route, "path", "") == "/auth/token"]
    assert token.dependant.body_params[0].field_info.annotation is form
