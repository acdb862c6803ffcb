"""The plumbing every service shares, on an app built with the shared factory."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.caller import IdentityDep
from shared.contract import Identity
from shared.service_app import ServiceSpec, create_service_app
from shared.settings import BaseServiceSettings
from tests.conftest import INTERNAL_SECRET, app_client, internal_headers

router = APIRouter()


@router.get("/things/{thing_id}")
async def get_thing(thing_id: int, identity: IdentityDep) -> dict[str, object]:
    return {"id": thing_id, "tenant": identity.tenant_id}


@router.post("/echo")
async def echo(body: dict[str, object], identity: IdentityDep) -> dict[str, object]:
    return body


@router.get("/boom")
async def boom(identity: IdentityDep) -> None:
    raise RuntimeError("database password is hunter2")


@router.get("/challenge")
async def challenge(identity: IdentityDep) -> None:
    raise StarletteHTTPException(401, "Who are you?", headers={"WWW-Authenticate": 'Basic realm="things"'})


@pytest.fixture(scope="module")
async def client(migrated) -> AsyncIterator[httpx.AsyncClient]:
    settings = BaseServiceSettings(
        environment="test",
        internal_token_secret=INTERNAL_SECRET,
        database_url=migrated.database_url("users"),
        max_body_bytes=1000,
    )
    app = create_service_app(settings, ServiceSpec(name="things", title="things", routers=[router]))
    clients = app_client(app)
    try:
        yield await anext(clients)
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await anext(clients)


@pytest.fixture
def headers(signer):
    return internal_headers(signer, "things", Identity(subject="u1", tenant_id="t1"))


async def test_unhandled_error_is_500_without_internals_and_logged_with_the_trace(client, headers, caplog):
    caplog.set_level(logging.ERROR, logger="portico.errors")
    response = await client.get("/boom", headers={**headers, "X-Request-ID": "req-boom-0001"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    # The server closes the connection after an unhandled error; the answer says so.
    assert response.headers["connection"] == "close"
    body = response.json()
    assert body["error_code"] == "INTERNAL_ERROR"
    assert body["request_id"] == "req-boom-0001"
    assert body["trace_id"]
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    record = next(r for r in caplog.records if r.name == "portico.errors")
    assert record.exc_info is not None

    from shared.logging import JsonFormatter

    line = json.loads(JsonFormatter("things").format(record))
    assert line["request_id"] == "req-boom-0001"
    assert "hunter2" in line["exc_info"]


async def test_metrics_are_labelled_by_route_template(client, headers):
    for thing_id in (1, 2, 3):
        assert (await client.get(f"/things/{thing_id}", headers=headers)).status_code == 200
    text = (await client.get("/metrics")).text
    assert 'http_requests_total{method="GET",route="/things/{thing_id}",status="200"} 3.0' in text
    assert "/things/1" not in text


async def test_body_limit_and_validation_on_a_service(client, headers):
    assert (await client.post("/echo", json={"a": "b"}, headers=headers)).status_code == 200
    too_big = await client.post("/echo", json={"a": "b" * 2000}, headers=headers)
    assert too_big.status_code == 413
    wrong = await client.get("/things/not-a-number", headers=headers)
    assert wrong.status_code == 422
    assert wrong.json()["errors"][0]["field"] == "thing_id"
    method = await client.delete("/echo", headers=headers)
    assert method.status_code == 405
    assert method.headers["content-type"] == "application/problem+json"


async def test_an_http_exception_keeps_its_status_and_headers(client, headers):
    response = await client.get("/challenge", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="things"'
    assert response.json()["detail"] == "Who are you?"


async def test_health_routes_need_no_identity(client):
    assert (await client.get("/health/live")).status_code == 200
    ready = await client.get("/health/ready")
    assert ready.json() == {"status": "ok", "checks": {"database": "ok"}}
    assert (await client.get("/things/1")).status_code == 401
