"""The one deprecation piece: a deprecated route says so in OpenAPI and on every answer, and every
deprecated answer is counted by route."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter

from gateway.edge.access import PRINCIPAL
from gateway.edge.deprecation import Deprecations
from gateway.routes.forward import Forward, ForwardRouter
from shared.deprecation import Deprecation

OLD = Deprecation(
    what="the old route",
    since=datetime(2026, 1, 1, tzinfo=UTC),
    sunset=datetime(2026, 12, 31, tzinfo=UTC),
    successor="/v2/thing",
    instead="use /v2/thing.",
)


def router() -> ForwardRouter:
    routes = ForwardRouter("users", prefix="/v1")
    routes.add(
        Forward("GET", "/old/{thing_id}", PRINCIPAL, "old", "The old shape", deprecation=OLD),
        Forward("GET", "/current", PRINCIPAL, "current", "The current shape"),
    )
    return routes


async def test_a_deprecated_route_is_marked_in_openapi_and_on_its_compiled_route():
    routes = router()
    assert {route.path: route.deprecation for route in routes} == {"/v1/old/{thing_id}": OLD, "/v1/current": None}
    app = FastAPI()
    app.include_router(routes.docs)
    paths = app.openapi()["paths"]
    assert paths["/v1/old/{thing_id}"]["get"]["deprecated"] is True
    assert "2026-12-31" in paths["/v1/old/{thing_id}"]["get"]["description"]
    assert "deprecated" not in paths["/v1/current"]["get"]


def test_answers_of_deprecated_routes_carry_the_headers_and_are_counted():
    registry = CollectorRegistry()
    deprecations = Deprecations(Counter("deprecated_calls", "", ("method", "route"), registry=registry))

    old: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
    deprecations.apply(old, "GET", "/v1/old/{thing_id}", OLD)
    headers = dict(old)
    assert headers[b"deprecation"] == b"@1767225600"
    assert headers[b"sunset"] == b"Thu, 31 Dec 2026 00:00:00 GMT"
    assert headers[b"link"] == b'</v2/thing>; rel="successor-version"'

    current: list[tuple[bytes, bytes]] = [(b"link", b'</v1/current?page=2>; rel="next"')]
    deprecations.apply(current, "GET", "/v1/current", None)
    assert current == [(b"link", b'</v1/current?page=2>; rel="next"')]

    # An answer a service marked deprecated itself (a retired field used): counted as well, untouched.
    said = [(name.lower().encode(), value.encode()) for name, value in OLD.headers().items()]
    deprecations.apply(list(said), "GET", "/v1/said-by-service", None)
    # A link the answer has already is kept; the successor is added to it.
    linked: list[tuple[bytes, bytes]] = [(b"link", b'</v1/old/abc?page=2>; rel="next"')]
    deprecations.apply(linked, "GET", "/v1/old/{thing_id}", OLD)
    assert dict(linked)[b"link"] == b'</v1/old/abc?page=2>; rel="next", </v2/thing>; rel="successor-version"'

    count = registry.get_sample_value
    assert count("deprecated_calls_total", {"method": "GET", "route": "/v1/old/{thing_id}"}) == 2
    assert count("deprecated_calls_total", {"method": "GET", "route": "/v1/said-by-service"}) == 1
    assert count("deprecated_calls_total", {"method": "GET", "route": "/v1/current"}) is None
