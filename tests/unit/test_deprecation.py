"""The one deprecation piece: a deprecated route says so in OpenAPI and on every answer, and every
deprecated answer is counted by route."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry, Counter
from starlette.responses import JSONResponse

from gateway.deps import AnyCaller
from gateway.edge.deprecation import DeprecationMiddleware
from gateway.routes.forward import Forward, add_forwards, deprecated_routes
from shared.deprecation import Deprecation

OLD = Deprecation(
    what="the old route",
    since=datetime(2026, 1, 1, tzinfo=UTC),
    sunset=datetime(2026, 12, 31, tzinfo=UTC),
    successor="/v2/thing",
    instead="use /v2/thing.",
)


def app_with(counter: Counter) -> tuple[FastAPI, APIRouter]:
    router = APIRouter(prefix="/v1")
    add_forwards(
        router,
        "users",
        [
            Forward("GET", "/old/{thing_id}", AnyCaller, "old", "The old shape", deprecation=OLD),
            Forward("GET", "/current", AnyCaller, "current", "The current shape"),
        ],
    )
    app = FastAPI()

    app.include_router(router)
    app.add_middleware(DeprecationMiddleware, routes=deprecated_routes(router.routes), counter=counter)
    return app, router


async def test_a_deprecated_route_is_marked_in_openapi_and_found_by_the_stage():
    counter = Counter("deprecated_calls", "", ("method", "route"), registry=CollectorRegistry())
    app, router = app_with(counter)
    assert deprecated_routes(router.routes) == {("GET", "/v1/old/{thing_id}"): OLD}
    paths = app.openapi()["paths"]
    assert paths["/v1/old/{thing_id}"]["get"]["deprecated"] is True
    assert "2026-12-31" in paths["/v1/old/{thing_id}"]["get"]["description"]
    assert "deprecated" not in paths["/v1/current"]["get"]


async def test_answers_of_deprecated_routes_carry_the_headers_and_are_counted():
    registry = CollectorRegistry()
    counter = Counter("deprecated_calls", "", ("method", "route"), registry=registry)
    app = FastAPI()

    @app.get("/v1/old/{thing_id}")
    async def old_route(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    @app.get("/v1/current")
    async def current_route() -> dict[str, str]:
        return {}

    # An answer a service marked deprecated itself (a retired field used): counted as well.
    @app.get("/v1/said-by-service")
    async def said_by_service() -> JSONResponse:
        return JSONResponse({}, headers=OLD.headers())

    routes = {("GET", "/v1/old/{thing_id}"): OLD}
    app.add_middleware(DeprecationMiddleware, routes=routes, counter=counter)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        old = await client.get("/v1/old/abc")
        assert old.json() == {"id": "abc"}  # it keeps working
        assert old.headers["deprecation"] == "@1767225600"
        assert old.headers["sunset"] == "Thu, 31 Dec 2026 00:00:00 GMT"
        assert old.headers["link"] == '</v2/thing>; rel="successor-version"'
        current = await client.get("/v1/current")
        assert "deprecation" not in current.headers
        await client.get("/v1/said-by-service")
    count = registry.get_sample_value
    assert count("deprecated_calls_total", {"method": "GET", "route": "/v1/old/{thing_id}"}) == 1
    assert count("deprecated_calls_total", {"method": "GET", "route": "/v1/said-by-service"}) == 1
    assert count("deprecated_calls_total", {"method": "GET", "route": "/v1/current"}) is None
