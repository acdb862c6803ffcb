"""The retired `enabled` field of webhook endpoints, end to end: it still works, answers that used it
say Deprecation, Sunset and the successor, the schema marks it deprecated, and the gateway counts the
calls by route."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime

import httpx

from shared.deprecation import WEBHOOK_ENDPOINT_ENABLED
from tests.e2e.test_webhooks_flow import PUBLIC_URL
from tests.edge_support import signup


def deprecated_calls(metrics: str, method: str, route: str) -> float:
    pattern = rf'^portico_deprecated_calls_total\{{method="{method}",route="{re.escape(route)}"\}} (\S+)$'
    found = re.search(pattern, metrics, re.M)
    return float(found[1]) if found else 0.0


async def test_the_enabled_field_still_works_and_says_it_is_deprecated(stack, gateway):
    tenant = await signup(gateway)
    route = "/v1/webhooks/endpoints/{endpoint_id}"
    before = deprecated_calls((await gateway.get("/metrics")).text, "PATCH", route)

    current = await gateway.post(
        "/v1/webhooks/endpoints", json={"url": PUBLIC_URL, "events": ["order.created"]}, headers=tenant.auth
    )
    assert current.status_code == 201, current.text
    assert "deprecation" not in current.headers
    endpoint = current.json()["id"]

    old = await gateway.patch(f"/v1/webhooks/endpoints/{endpoint}", json={"enabled": False}, headers=tenant.auth)
    assert old.status_code == 200, old.text
    assert old.json()["status"] == "disabled"
    assert old.headers["deprecation"] == f"@{int(WEBHOOK_ENDPOINT_ENABLED.since.timestamp())}"
    assert parsedate_to_datetime(old.headers["sunset"]) == WEBHOOK_ENDPOINT_ENABLED.sunset
    assert old.headers["link"] == '</v1/webhooks/endpoints>; rel="successor-version"'

    created_old = await gateway.post(
        "/v1/webhooks/endpoints",
        json={"url": PUBLIC_URL, "events": ["order.created"], "enabled": True},
        headers=tenant.auth,
    )
    assert created_old.status_code == 201, created_old.text
    assert "deprecation" in created_old.headers

    new = await gateway.patch(f"/v1/webhooks/endpoints/{endpoint}", json={"status": "active"}, headers=tenant.auth)
    assert new.status_code == 200
    assert "deprecation" not in new.headers

    after = deprecated_calls((await gateway.get("/metrics")).text, "PATCH", route)
    assert after == before + 1

    schema = httpx.get(stack.url("webhooks") + "/openapi.json").json()["components"]["schemas"]
    for model in ("EndpointCreate", "EndpointUpdate", "EndpointOut"):
        enabled = schema[model]["properties"]["enabled"]
        assert enabled["deprecated"] is True
        assert "2027-05-31" in enabled["description"]
        assert "deprecated" not in schema[model]["properties"]["status"]
