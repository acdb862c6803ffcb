"""What a Jaeger user finds in the exported spans: the stable HTTP conventions, who called, what the
edge decided, client spans named after the service they call. Read from the suite's OTLP receiver."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable

from tests.e2e.test_foundation import assert_problem, signup, unique_email
from tests.otlp import OtlpReceiver, ReceivedSpan

SERVER, CLIENT = 2, 3
# The attributes of the conventions before the stable HTTP ones; none may appear.
OLD_HTTP_ATTRIBUTES = {"http.method", "http.url", "http.status_code", "http.target", "net.peer.ip", "net.host.name"}


async def spans_of(
    otlp: OtlpReceiver, trace_id: str, ready: Callable[[list[ReceivedSpan]], bool]
) -> list[ReceivedSpan]:
    deadline = time.monotonic() + 20
    spans = otlp.trace(trace_id)
    while not ready(spans) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        spans = otlp.trace(trace_id)
    return spans


def gateway_server(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.service == "gateway" and s.kind == SERVER]


def traceparent() -> tuple[str, str]:
    trace_id = os.urandom(16).hex()
    return trace_id, f"00-{trace_id}-{os.urandom(8).hex()}-01"


async def test_gateway_server_span_has_stable_conventions_caller_and_rate_limit(gateway, otlp):
    created, token = await signup(gateway)
    trace_id, parent = traceparent()
    request_id = f"trace-test-{uuid.uuid4().hex}"
    response = await gateway.get(
        "/v1/users/me",
        headers={"Authorization": f"Bearer {token}", "traceparent": parent, "X-Request-ID": request_id},
    )
    assert response.status_code == 200, response.text

    def complete(spans: list[ReceivedSpan]) -> bool:
        called = any(s.kind == CLIENT and "peer.service" in s.attributes for s in spans)
        served = any(s.service == "users" and s.kind == SERVER for s in spans)
        return bool(gateway_server(spans)) and called and served

    spans = await spans_of(otlp, trace_id, complete)
    [server] = gateway_server(spans)
    assert server.name == "GET /v1/users/me"
    attrs = server.attributes
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.route"] == "/v1/users/me"
    assert attrs["url.path"] == "/v1/users/me"
    assert attrs["url.scheme"] == "http"
    assert attrs["server.address"] == "127.0.0.1"
    assert isinstance(attrs["server.port"], int)
    assert attrs["http.response.status_code"] == 200
    assert attrs["client.address"] == "127.0.0.1"
    # Who called, never with what.
    assert attrs["portico.request_id"] == request_id
    assert attrs["portico.tenant_id"] == created["tenant"]["id"]
    assert attrs["enduser.id"] == created["user"]["id"]
    # The edge's decision.
    assert attrs["portico.rate_limit.decision"] == "admitted"
    assert attrs["portico.rate_limit.policy"] == "pro"
    assert isinstance(attrs["portico.rate_limit.remaining"], int)
    assert 0 <= attrs["portico.rate_limit.remaining"] < 1000

    # The upstream call: named after the service and route, with the stable client attributes.
    # (The Redis command of the rate limiter is a client span too.)
    [client] = [
        s for s in spans if s.service == "gateway" and s.kind == CLIENT and "http.request.method" in s.attributes
    ]
    assert client.name == "GET users /users/me"
    assert client.parent_span_id == server.span_id
    assert client.attributes["peer.service"] == "users"
    assert client.attributes["http.request.method"] == "GET"
    assert str(client.attributes["url.full"]).endswith("/users/me")
    assert client.attributes["http.response.status_code"] == 200
    assert "server.address" in client.attributes

    # The service's own server span names the same caller, from the internal token, and the same request.
    [users] = [s for s in spans if s.service == "users" and s.kind == SERVER]
    assert users.name == "GET /users/me"
    assert users.attributes["portico.tenant_id"] == created["tenant"]["id"]
    assert users.attributes["enduser.id"] == created["user"]["id"]
    assert users.attributes["portico.request_id"] == request_id

    for span in spans:
        assert not OLD_HTTP_ATTRIBUTES & set(span.attributes), (span.name, span.attributes)
        assert all(token not in str(value) for value in span.attributes.values()), span.name


async def test_trace_id_of_an_error_body_finds_the_request(gateway, otlp):
    _, token = await signup(gateway)
    missing = str(uuid.uuid4())
    response = await gateway.get(f"/v1/users/{missing}", headers={"Authorization": f"Bearer {token}"})
    body = assert_problem(response, 404)
    assert body["trace_id"]

    spans = await spans_of(otlp, body["trace_id"], lambda spans: bool(gateway_server(spans)))
    [server] = gateway_server(spans)
    assert server.name == "GET /v1/users/{user_id}"
    assert server.attributes["http.response.status_code"] == 404
    assert server.attributes["portico.request_id"] == body["request_id"]
    # The client span's name holds the route, not the id.
    assert any(s.name == "GET users /users/{id}" for s in spans if s.kind == CLIENT), [s.name for s in spans]


async def test_replay_and_not_modified_are_recorded_on_the_server_span(gateway, otlp):
    _, token = await signup(gateway)
    auth = {"Authorization": f"Bearer {token}"}
    key = f"trace-{uuid.uuid4().hex}"
    user = {"email": unique_email("member"), "password": "correct-horse-9", "role": "member"}
    first = await gateway.post("/v1/users", json=user, headers={**auth, "Idempotency-Key": key})
    assert first.status_code == 201, first.text
    trace_id, parent = traceparent()
    again = await gateway.post("/v1/users", json=user, headers={**auth, "Idempotency-Key": key, "traceparent": parent})
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    [replayed] = gateway_server(await spans_of(otlp, trace_id, lambda spans: bool(gateway_server(spans))))
    # Named after its route like any other answer, though the edge answered it without the route.
    assert replayed.name == "POST /v1/users"
    assert replayed.attributes["http.route"] == "/v1/users"
    assert replayed.attributes["portico.idempotency.outcome"] == "replayed"
    # The claim's Redis call is an event of the request's span, named by what it is for.
    assert "idempotency.claim" in replayed.events
    assert "idempotency.replayed" in replayed.events

    me = await gateway.get("/v1/users/me", headers=auth)
    trace_id, parent = traceparent()
    cached = await gateway.get(
        "/v1/users/me", headers={**auth, "If-None-Match": me.headers["etag"], "traceparent": parent}
    )
    assert cached.status_code == 304
    [not_modified] = gateway_server(await spans_of(otlp, trace_id, lambda spans: bool(gateway_server(spans))))
    assert not_modified.attributes["http.response.status_code"] == 304
    assert "cache.not_modified" in not_modified.events


async def test_probes_are_not_traced_and_refusals_name_no_caller(gateway, otlp):
    trace_id, parent = traceparent()
    probe = await gateway.get("/health/live", headers={"traceparent": parent})
    assert probe.status_code == 200
    bad = await gateway.get("/v1/users/me", headers={"Authorization": "Bearer not-a-jwt", "traceparent": parent})
    assert bad.status_code == 401
    spans = await spans_of(otlp, trace_id, lambda spans: bool(gateway_server(spans)))
    [server] = gateway_server(spans)
    assert server.attributes["url.path"] == "/v1/users/me"
    assert server.attributes["http.response.status_code"] == 401
    assert "enduser.id" not in server.attributes
