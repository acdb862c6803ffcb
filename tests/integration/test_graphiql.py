"""GraphiQL: served where the API reference is on, with every asset from the gateway itself; absent
in production, where introspection is off too."""

from __future__ import annotations

import re

from tests.edge_support import bearer, gateway_settings, in_process_gateway


async def test_graphiql_and_its_assets_come_from_the_gateway():
    async with in_process_gateway(gateway_settings(None)) as gateway:
        page = await gateway.get("/graphql")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert len(urls) == 5
        for url in urls:
            assert url.startswith("/graphql/static/"), url  # nothing from elsewhere
            asset = await gateway.get(url, headers={"Accept-Encoding": "gzip"})
            assert asset.status_code == 200, url
            assert len(asset.content) > 100
        raw = await gateway.get("/graphql/static/graphiql.min.js", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in raw.headers
        assert b"window.GraphiQL" in raw.content
        packed = await gateway.get("/graphql/static/graphiql.min.js", headers={"Accept-Encoding": "gzip"})
        assert packed.headers["content-encoding"] == "gzip"
        assert (await gateway.get("/graphql/static/../app.py")).status_code == 404
        assert (await gateway.get("/graphql/static/nope.js")).status_code == 404


async def test_no_graphiql_and_no_introspection_in_production():
    settings = gateway_settings(None, environment="production")
    assert not settings.docs_enabled
    async with in_process_gateway(settings) as gateway:
        page = await gateway.get("/graphql", headers=bearer())
        assert page.status_code in (404, 405)
        assert "text/html" not in page.headers.get("content-type", "")
        assert (await gateway.get("/graphql/static/graphiql.min.js")).status_code == 404
        introspection = await gateway.post(
            "/graphql", json={"query": "{ __schema { types { name } } }"}, headers=bearer()
        )
        assert introspection.status_code == 200
        assert "introspection" in introspection.json()["errors"][0]["message"].lower()


async def test_without_graphiql_a_405_names_post_alone():
    async with in_process_gateway(gateway_settings(None, environment="production")) as gateway:
        for method in ("GET", "OPTIONS", "PUT"):
            refused = await gateway.request(method, "/graphql", headers=bearer())
            assert refused.status_code == 405
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.headers["allow"] == "POST"
            assert refused.json()["error_code"] == "METHOD_NOT_ALLOWED"
