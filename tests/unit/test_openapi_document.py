"""The OpenAPI documents teach: every operation of the gateway's is described, with examples that fit
their schemas; operation ids are route names in every process's document; each service documents the
same specific errors for a route as the gateway does; the documents are valid OpenAPI."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from graphql import parse, validate
from openapi_spec_validator import validate as validate_spec
from pydantic import BaseModel

from gateway.app import FORWARD_ROUTERS
from gateway.app import create_app as create_gateway
from gateway.graphql.router import GRAPHQL_REQUEST_EXAMPLE, create_schema
from gateway.openapi import BODY_ERRORS, CREDENTIAL_ERRORS, EDGE_ERRORS, IDEMPOTENCY_ERRORS, TAGS, model_example
from gateway.routes import aggregates
from gateway.settings import GatewaySettings, Quota
from shared.errors import PROBLEM_JSON
from shared.pagination import InvalidCursor
from tests.conftest import INTERNAL_SECRET, JWT_SECRET

METHODS = ("get", "put", "post", "patch", "delete")
SERVICES = ("users", "orders", "inventory", "webhooks")
# The errors the gateway answers itself on every forwarded route (or relays from any service).
GATEWAY_OWN_CODES = {
    error.error_code for error in (*EDGE_ERRORS, *CREDENTIAL_ERRORS, *IDEMPOTENCY_ERRORS, *BODY_ERRORS)
}


def gateway_settings(**overrides: Any) -> GatewaySettings:
    return GatewaySettings(
        environment="test", internal_token_secret=INTERNAL_SECRET, jwt_secret=JWT_SECRET, access_log=False, **overrides
    )


@cache
def gateway_app() -> FastAPI:
    return create_gateway(gateway_settings())


@cache
def service_app(name: str) -> FastAPI:
    kwargs: dict[str, Any] = {
        "environment": "test",
        "internal_token_secret": INTERNAL_SECRET,
        "database_url": "sqlite+aiosqlite:///:memory:",
        "access_log": False,
    }
    if name == "users":
        from services.users.app import create_app as create_users
        from services.users.settings import UsersSettings

        return create_users(UsersSettings(**kwargs, jwt_secret=JWT_SECRET))
    if name == "orders":
        from services.orders.app import create_app as create_orders
        from services.orders.settings import OrdersSettings

        return create_orders(OrdersSettings(**kwargs))
    if name == "inventory":
        from services.inventory.app import create_app as create_inventory
        from services.inventory.settings import InventorySettings

        return create_inventory(InventorySettings(**kwargs))
    from services.webhooks.app import create_app as create_webhooks
    from services.webhooks.settings import WebhooksSettings

    return create_webhooks(WebhooksSettings(**kwargs))


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def codes_by_status(operation: dict[str, Any], where: str) -> dict[str, set[str]]:
    """The error codes each problem response of `operation` names; each must name them."""
    codes: dict[str, set[str]] = {}
    for status, response in operation["responses"].items():
        if PROBLEM_JSON in response.get("content", {}):
            assert response.get("x-error-codes"), f"{where}: {status} names no error codes"
            codes[status] = set(response["x-error-codes"])
        elif status[0] in "45":
            raise AssertionError(f"{where}: {status} is not documented as {PROBLEM_JSON}")
    return codes


def all_codes(by_status: dict[str, set[str]]) -> set[str]:
    return {code for codes in by_status.values() for code in codes}


def has_example(media: dict[str, Any], document: dict[str, Any]) -> bool:
    """An example on the media type, or on the model schema it names (a body FastAPI documents)."""
    if "example" in media or media.get("examples"):
        return True
    ref = media.get("schema", {}).get("$ref", "")
    return bool(ref) and bool(document["components"]["schemas"][ref.rsplit("/", 1)[1]].get("examples"))


def test_every_operation_is_described_with_examples() -> None:
    document = gateway_app().openapi()
    found = list(operations(document))
    assert len(found) >= 37
    for method, path, operation in found:
        where = f"{method} {path}"
        assert operation.get("summary"), where
        assert len(operation.get("description", "")) >= 40, where
        for media_type, media in operation.get("requestBody", {}).get("content", {}).items():
            assert has_example(media, document), f"{where}: request body {media_type}"
        for status, response in operation["responses"].items():
            for media_type, media in response.get("content", {}).items():
                assert has_example(media, document), f"{where}: {status} {media_type}"
                if media_type == PROBLEM_JSON:
                    for example in media["examples"].values():
                        body = example["value"]
                        # A detail as the process words it, not the title again.
                        assert body["detail"] != f"{body['title']}.", f"{where}: {status} {body['error_code']}"


def test_the_document_describes_the_api_from_the_settings() -> None:
    document = gateway_app().openapi()
    description = document["info"]["description"]
    settings = gateway_settings()
    for heading in ("Authentication", "Tenants", "Plans and quotas", "Idempotency", "Rate-limit headers", "Errors"):
        assert f"## {heading}" in description
    assert "POST /v1/auth/token" in description
    assert "X-API-Key" in description
    assert "Idempotency-Key" in description
    assert "application/problem+json" in description
    assert "next_cursor" in description
    # Both credentials at once are refused, and the document says so.
    assert "never both" in description
    assert "AMBIGUOUS_CREDENTIALS" in description
    assert "not both" in document["components"]["securitySchemes"]["apiKeyAuth"]["description"]
    for plan, quota in settings.plan_quotas().items():
        assert f"| `{plan}` | {quota.limit:,} requests per {quota.window_seconds} s |" in description
    # The figures are the settings', not copied: other settings, other figures.
    custom = create_gateway(gateway_settings(rate_limit_pro=Quota(1234, 30))).openapi()["info"]["description"]
    assert "| `pro` | 1,234 requests per 30 s |" in custom
    # The routes' own quotas are the ones in force: the rows', and the setting's over them.
    assert "- `POST /v1/auth/token`: 120 requests per 60 s" in description
    assert "- `POST /v1/tenants`: 120 requests per 60 s" in description
    overridden = create_gateway(
        gateway_settings(rate_limit_routes={"POST /v1/tenants": Quota(5, 60), "GET /v1/users/me": Quota(7, 10)})
    ).openapi()["info"]["description"]
    assert "- `POST /v1/auth/token`: 120 requests per 60 s" in overridden
    assert "- `POST /v1/tenants`: 5 requests per 60 s" in overridden
    assert "- `GET /v1/users/me`: 7 requests per 10 s" in overridden
    tags = {tag["name"]: tag["description"] for tag in document["tags"]}
    used = {tag for _, _, operation in operations(document) for tag in operation["tags"]}
    assert used == set(tags)
    assert all(tags.values())
    assert set(tags) <= {tag["name"] for tag in TAGS}


def test_graphql_is_an_operation() -> None:
    operation = gateway_app().openapi()["paths"]["/graphql"]["post"]
    assert operation["operationId"] == "graphql"
    assert operation["security"] == [{"bearerAuth": []}, {"apiKeyAuth": []}]
    body = operation["requestBody"]["content"]["application/json"]
    assert body["schema"]["required"] == ["query"]
    assert set(body["schema"]["properties"]) == {"query", "variables", "operationName"}
    assert {"200", "400", "401", "415", "429"} <= set(operation["responses"])
    assert "MALFORMED_BODY" in operation["responses"]["400"]["x-error-codes"]
    # The example is a query the schema runs.
    schema = create_schema(gateway_settings())._schema
    assert validate(schema, parse(GRAPHQL_REQUEST_EXAMPLE["query"])) == []


def _models() -> Iterator[type[BaseModel]]:
    for router in FORWARD_ROUTERS:
        yield from (body.model for body in router.documented_bodies)
    yield aggregates.OrderDraft


def _answers() -> Iterator[type[BaseModel]]:
    for router in FORWARD_ROUTERS:
        yield from (row.answer for row in router.rows if row.answer is not None)
    yield from (aggregates.Dashboard, aggregates.OrderValidation)


@pytest.mark.parametrize("model", sorted({*_models(), *_answers()}, key=lambda m: m.__name__), ids=lambda m: m.__name__)
def test_examples_fit_their_models(model: type[BaseModel]) -> None:
    example = model_example(model)
    assert example is not None, f"{model.__name__} has no example"
    model.model_validate(example)


@pytest.mark.parametrize("process", ["gateway", *SERVICES])
def test_operation_ids_are_route_names_and_documents_are_valid(process: str) -> None:
    app = gateway_app() if process == "gateway" else service_app(process)
    document = app.openapi()
    validate_spec(document)
    ids = {(method, path): operation["operationId"] for method, path, operation in operations(document)}
    assert len(set(ids.values())) == len(ids), "operation ids are unique"
    # Every route the document shows, those of included routers too, as the app runs them.
    routes = [
        context
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute) and context.original_route.include_in_schema
    ]
    assert len(routes) == len(ids)
    for context in routes:
        for method in context.original_route.methods:
            assert ids[method, context.path] == context.name, f"{method} {context.path}"
    assert ids["GET", "/health/live"] == "live"
    assert ids["GET", "/health/ready"] == "ready"


def _template(path: str) -> str:
    return re.sub(r"{\w+}", "{}", path)


def test_services_document_the_errors_the_gateway_lists_for_each_route() -> None:
    gateway = {(method, path): op for method, path, op in operations(gateway_app().openapi())}
    services = {
        name: {(method, _template(path)): op for method, path, op in operations(service_app(name).openapi())}
        for name in SERVICES
    }
    checked = 0
    for router in FORWARD_ROUTERS:
        for row in router.rows:
            path, upstream = router.prefix + row.path, router.upstream_prefix + row.path
            where = f"{row.method} {path}"
            service_codes = codes_by_status(services[router.service][row.method, _template(upstream)], where)
            gateway_codes = codes_by_status(gateway[row.method, path], where)
            # Whatever the service documents for the route, the gateway documents, under the same status.
            for status, codes in service_codes.items():
                assert codes <= gateway_codes.get(status, set()), f"{where}: {status}"
            # One source: the row's errors are what the service documents besides the gateway's own
            # (which the gateway answers before forwarding, or relays for any route), and what the
            # gateway documents besides its own.
            own = GATEWAY_OWN_CODES | {error.error_code for error in router.errors}
            declared = {error.error_code for error in row.errors}
            assert declared <= all_codes(service_codes), where
            assert all_codes(service_codes) - own == declared - own, where
            assert all_codes(gateway_codes) - own == declared - own, where
            checked += 1
    assert checked >= 30


@pytest.mark.parametrize("process", ["gateway", *SERVICES])
def test_every_error_response_names_its_codes_and_every_page_its_cursor_error(process: str) -> None:
    document = (gateway_app() if process == "gateway" else service_app(process)).openapi()
    pages = 0
    for method, path, operation in operations(document):
        codes = all_codes(codes_by_status(operation, f"{process}: {method} {path}"))
        if any(parameter["name"] == "cursor" for parameter in operation.get("parameters", [])):
            assert InvalidCursor.error_code in codes, f"{process}: {method} {path}"
            pages += 1
    assert pages >= 1
