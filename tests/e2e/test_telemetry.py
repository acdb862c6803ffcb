"""What a Jaeger and Grafana user reads of the system is what happened: a client that left is not a
500, an idle stack sends no traces, spans are named after what they did, a sampled answer says which
trace it belongs to, and a scrape holds no `_created` series. Read from the suite's OTLP receiver and
the processes' own /metrics and logs."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import struct
import time
import uuid

import httpx

from tests.e2e.test_foundation import signup
from tests.e2e.test_traces import CLIENT, SERVER, spans_of, traceparent
from tests.orders_support import unique
from tests.otlp import OtlpReceiver

ERROR = 2
ROUTE = "/docs/assets"


def counted(metrics: str, route: str, status: str) -> float:
    pattern = rf'^http_requests_total\{{method="GET",route="{re.escape(route)}",status="{status}"\}} (\S+)$'
    found = re.search(pattern, metrics, re.M)
    return float(found[1]) if found else 0.0


def reset_after_sending(url: str, path: str, request_id: str) -> None:
    """A client that sends its request and resets the connection at once (as a browser dropping a
    favicon or a script fetch does)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Request-ID: {request_id}\r\n\r\n".encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def test_a_client_that_leaves_is_client_closed_never_a_500(stack, gateway):
    before = (await gateway.get("/metrics")).text
    marker = uuid.uuid4().hex
    for n in range(5):
        reset_after_sending(stack.url(), f"{ROUTE}/favicon.png", f"{marker}-{n}")

    async def counted_all() -> bool:
        return counted((await gateway.get("/metrics")).text, ROUTE, "client_closed") >= (
            counted(before, ROUTE, "client_closed") + 5
        )

    deadline = time.monotonic() + 30
    while not await counted_all():
        assert time.monotonic() < deadline, "the resets were never counted"
        await asyncio.sleep(0.2)
    after = (await gateway.get("/metrics")).text
    assert counted(after, ROUTE, "client_closed") == counted(before, ROUTE, "client_closed") + 5
    assert counted(after, ROUTE, "500") == counted(before, ROUTE, "500")
    # Logged as what it is, at INFO, and no error line.
    lines = [json.loads(line) for line in (stack.log_dir / "gateway.log").read_text().splitlines() if marker in line]
    assert [(line["level"], line["http_status"]) for line in lines] == [("INFO", "client_closed")] * 5


async def test_the_edges_own_answers_are_labelled_with_their_route(gateway):
    """A 401 the edge answers before any route runs, and a replay, are counted under the route they
    were for, not as unmatched."""
    before = (await gateway.get("/metrics")).text
    refused = await gateway.get("/v1/users/me", headers={"Authorization": "Bearer not-a-token"})
    assert refused.status_code == 401
    _, token = await signup(gateway)
    auth = {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex}
    body = {"email": f"{unique('member')}@example.com", "password": "correct-horse-9", "role": "member"}
    for _ in range(2):
        assert (await gateway.post("/v1/users", json=body, headers=auth)).status_code == 201
    after = (await gateway.get("/metrics")).text
    assert counted(after, "/v1/users/me", "401") == counted(before, "/v1/users/me", "401") + 1

    def posted(metrics: str) -> float:
        pattern = r'^http_requests_total\{method="POST",route="/v1/users",status="201"\} (\S+)$'
        found = re.search(pattern, metrics, re.M)
        return float(found[1]) if found else 0.0

    assert posted(after) == posted(before) + 2


async def test_a_sampled_answer_names_its_trace_and_an_unsampled_one_does_not(gateway, otlp):
    _, token = await signup(gateway)
    trace_id, parent = traceparent()
    answered = await gateway.get("/v1/users/me", headers={"Authorization": f"Bearer {token}", "traceparent": parent})
    version, answered_trace, span_id, flags = answered.headers["traceresponse"].split("-")
    assert (version, answered_trace, flags) == ("00", trace_id, "01")
    spans = await spans_of(otlp, trace_id, lambda spans: any(s.kind == SERVER for s in spans))
    [server] = [s for s in spans if s.service == "gateway" and s.kind == SERVER]
    assert server.span_id == span_id
    # The service behind says which of its spans answered the gateway, too.
    unsampled = await gateway.get(
        "/v1/users/me",
        headers={
            "Authorization": f"Bearer {token}",
            "traceparent": f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-00",
        },
    )
    assert unsampled.status_code == 200
    assert "traceresponse" not in unsampled.headers


async def test_sql_spans_are_named_by_operation_and_table_and_a_refused_call_is_an_error(gateway, otlp):
    _, token = await signup(gateway)
    auth = {"Authorization": f"Bearer {token}"}
    trace_id, parent = traceparent()
    created = await gateway.post(
        "/v1/products",
        json={"sku": unique("sku"), "name": "Lamp", "price_cents": 100, "stock": 1},
        headers={**auth, "traceparent": parent},
    )
    assert created.status_code == 201, created.text
    spans = await spans_of(
        otlp, trace_id, lambda spans: any(s.service == "inventory" and s.name == "INSERT products" for s in spans)
    )
    [insert] = [s for s in spans if s.service == "inventory" and s.name == "INSERT products"]
    assert insert.attributes["db.operation.name"] == "INSERT"
    assert insert.attributes["db.collection.name"] == "products"
    assert insert.attributes["db.system.name"] == "postgresql"
    # Named after what they did, never after the database file or address.
    for span in spans:
        if "db.operation.name" in span.attributes:
            assert span.name.split(" ")[0] == span.attributes["db.operation.name"], span.name

    trace_id, parent = traceparent()
    missing = await gateway.get(f"/v1/products/{uuid.uuid4()}", headers={**auth, "traceparent": parent})
    assert missing.status_code == 404
    # The request's span ends after its call's, so it may reach the receiver in a later batch: wait for both.
    spans = await spans_of(otlp, trace_id, lambda spans: {CLIENT, SERVER} <= {s.kind for s in spans})
    [call] = [s for s in spans if s.service == "gateway" and s.kind == CLIENT]
    # A call answered 4xx is an error of the call; the request's own span is not (it is the caller's).
    assert call.status == ERROR
    [server] = [s for s in spans if s.service == "gateway" and s.kind == SERVER]
    assert server.status != ERROR


async def test_an_idle_stack_sends_no_span(stack, otlp: OtlpReceiver):
    """The gateway's and the services' background loops poll all the time (the event relays, the
    outbox): with no request, none of it is traced. Several of their poll intervals, after the spans of
    the tests before have arrived."""
    # Quiet first: the last spans of the tests before (and of the events they made, which the relays
    # carry, traced) have arrived once a second goes by without one.
    deadline = time.monotonic() + 30
    count = -1
    while count != len(otlp.spans):
        assert time.monotonic() < deadline, "the stack never went quiet"
        count = len(otlp.spans)
        await asyncio.sleep(1.0)
    await asyncio.sleep(5.0)
    new = otlp.spans[count:]
    assert [(s.service, s.name) for s in new] == []


async def test_a_scrape_holds_no_created_series(stack):
    async with httpx.AsyncClient() as client:
        for url in (stack.url(), stack.url("orders")):
            scrape = (await client.get(f"{url}/metrics")).text
            assert "http_requests_total" in scrape
            assert "_created" not in scrape
