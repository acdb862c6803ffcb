"""The access line of a request whose caller is known names the caller's tenant, as its span does;
an anonymous request's names none. SQL spans are named `<OPERATION> <table>`, a locked table too."""

from __future__ import annotations

import logging

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from starlette.types import Receive, Scope, Send

from shared.context import request_context
from shared.contract import Identity
from shared.metrics import HttpMetrics
from shared.middleware import TENANT_FIELD, ObservabilityMiddleware
from shared.sql_spans import sql_span_name
from shared.telemetry import ServerSpans


async def answered_by(caller: Identity | None) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request_context(scope).principal = caller
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    observed = ObservabilityMiddleware(
        app, spans=ServerSpans(TracerProvider()), metrics=HttpMetrics(CollectorRegistry())
    )
    transport = httpx.ASGITransport(app=observed)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/things")).status_code == 200


@pytest.mark.parametrize(
    ("caller", "tenant"),
    [(Identity(subject="u-1", tenant_id="t-1"), "t-1"), (None, None)],
    ids=["a tenant's caller", "anonymous"],
)
async def test_the_access_line_names_the_callers_tenant(caplog, caller, tenant):
    with caplog.at_level(logging.INFO, logger="portico.access"):
        await answered_by(caller)
    [line] = [record for record in caplog.records if record.name == "portico.access"]
    assert getattr(line, TENANT_FIELD, None) == tenant


@pytest.mark.parametrize(
    ("statement", "name"),
    [
        ("SELECT id FROM products WHERE id = $1", "SELECT products"),
        ('INSERT INTO "outbox" (id) VALUES ($1)', "INSERT outbox"),
        ("UPDATE orders SET status = $1", "UPDATE orders"),
        ("LOCK TABLE outbox IN SHARE MODE", "LOCK outbox"),
        ("/* a comment */ DELETE FROM public.deliveries", "DELETE deliveries"),
        ("BEGIN", "BEGIN"),
    ],
)
def test_a_sql_span_is_named_by_operation_and_table(statement, name):
    assert sql_span_name(statement)[2] == name
