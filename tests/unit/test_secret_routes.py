"""Answers that hold a secret are never kept by a cache: the gateway marks every route of the
contract's list `no-store`, whatever the service behind it said."""

from __future__ import annotations

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from gateway.app import create_app
from gateway.edge.caching import CachingMiddleware
from shared.context import open_context
from shared.contract import SECRET_ROUTES, Identity


async def through_the_caching_stage(method: str, template: str) -> httpx.Response:
    """The answer of the caching stage to a tenant's request to the route `template`, the service
    behind it saying nothing about caching."""

    class Route:
        path = template

    async def service(scope: Scope, receive: Receive, send: Send) -> None:
        # What the request context and authentication stages, and routing, leave in the scope.
        open_context(scope, "req-secret-routes").principal = Identity(subject="u1", tenant_id="t1")
        scope["route"] = Route()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"secret": "whsec_x"}'})

    stage = CachingMiddleware(service, etag=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=stage), base_url="http://test") as client:
        return await client.request(method, template)


def test_every_secret_route_is_a_route_of_the_gateway():
    paths = create_app().openapi()["paths"]
    routes = {(method.upper(), path) for path, operations in paths.items() for method in operations}
    assert routes >= SECRET_ROUTES


@pytest.mark.parametrize(("method", "template"), sorted(SECRET_ROUTES))
async def test_the_edge_marks_secret_answers_no_store(method, template):
    response = await through_the_caching_stage(method, template)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"


async def test_a_rotated_webhook_secret_is_sent_no_store():
    response = await through_the_caching_stage("POST", "/v1/webhooks/endpoints/{endpoint_id}/rotate-secret")
    assert response.headers["cache-control"] == "no-store"


async def test_other_tenant_answers_stay_private():
    response = await through_the_caching_stage("POST", "/v1/webhooks/endpoints/{endpoint_id}/deliveries")
    assert response.headers["cache-control"] == "private, no-cache"
