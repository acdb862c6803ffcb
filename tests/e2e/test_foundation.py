"""The whole system as real processes on PostgreSQL: tenant -> token -> me, errors, one trace."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from collections import Counter

import httpx
from jose import jwt
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import JWT_SECRET

PASSWORD = "correct-horse-9"


def unique_email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.com"


async def signup(gateway: httpx.AsyncClient, plan: str = "pro") -> tuple[dict, str]:
    email = unique_email("admin")
    created = await gateway.post(
        "/v1/tenants", json={"name": "Acme", "plan": plan, "admin_email": email, "admin_password": PASSWORD}
    )
    assert created.status_code == 201, created.text
    token = await gateway.post("/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert token.status_code == 200, token.text
    return created.json(), token.json()["access_token"]


def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail", "error_code", "request_id", "trace_id"} <= set(body)
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    if code is not None:
        assert body["error_code"] == code
    return body


async def test_tenant_token_me_through_the_gateway(gateway):
    created, token = await signup(gateway)
    me = await gateway.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["id"] == created["user"]["id"]
    assert body["email"] == created["user"]["email"]
    assert body["role"] == "admin"
    assert body["tenant_id"] == created["tenant"]["id"]
    assert me.headers["x-request-id"]


async def test_request_id_is_echoed_when_well_formed_and_replaced_otherwise(gateway):
    good = await gateway.get("/health/live", headers={"X-Request-ID": "client-req-12345"})
    assert good.headers["x-request-id"] == "client-req-12345"
    bad = await gateway.get("/health/live", headers={"X-Request-ID": "bad id\twith spaces"})
    assert bad.headers["x-request-id"] != "bad id\twith spaces"
    assert len(bad.headers["x-request-id"]) == 32


async def test_bad_tokens_are_401_with_a_challenge(gateway):
    _, token = await signup(gateway)
    claims = jwt.get_unverified_claims(token)
    now = int(time.time())
    forged = jwt.encode({**claims, "tid": str(uuid.uuid4())}, "x" * 48, algorithm="HS256", headers={"kid": "portico-1"})
    expired = jwt.encode(
        {**claims, "iat": now - 7200, "exp": now - 3600}, JWT_SECRET, algorithm="HS256", headers={"kid": "portico-1"}
    )
    unknown_kid = jwt.encode(claims, JWT_SECRET, algorithm="HS256", headers={"kid": "other"})
    no_tenant = jwt.encode(
        {k: v for k, v in claims.items() if k != "tid"}, JWT_SECRET, algorithm="HS256", headers={"kid": "portico-1"}
    )
    # Unsigned tokens: a real {"alg": "none"} header, however it is capitalised, with or without the
    # signature of the genuine token kept on.
    unsigned = []
    for alg in ("none", "None", "nOnE", "NONE"):
        header = b64url(json.dumps({"alg": alg, "typ": "JWT", "kid": "portico-1"}).encode())
        payload = token.split(".")[1]
        unsigned += [f"{header}.{payload}.", f"{header}.{payload}.{token.split('.')[2]}"]
    stripped = token.rsplit(".", 1)[0] + "."  # the genuine header (HS256) without its signature
    for bad in (forged, expired, unknown_kid, no_tenant, *unsigned, stripped, "garbage", token[:-3] + "abc"):
        response = await gateway.get("/v1/users/me", headers={"Authorization": f"Bearer {bad}"})
        assert_problem(response, 401, "INVALID_TOKEN")
        assert response.headers["www-authenticate"].startswith("Bearer")
    no_credentials = await gateway.get("/v1/users/me")
    assert_problem(no_credentials, 401, "AUTHENTICATION_REQUIRED")
    # Both ways in are offered: a bearer token and an API key.
    assert (
        no_credentials.headers["www-authenticate"]
        == 'Bearer realm="portico", ApiKey realm="portico", header="X-API-Key"'
    )
    # A route keys may not call offers the token only.
    keys = await gateway.get("/v1/api-keys")
    assert_problem(keys, 401, "AUTHENTICATION_REQUIRED")
    assert keys.headers["www-authenticate"] == 'Bearer realm="portico"'
    wrong_scheme = await gateway.get("/v1/users/me", headers={"Authorization": f"Basic {token}"})
    assert_problem(wrong_scheme, 401, "INVALID_TOKEN")


async def test_tenant_header_that_disagrees_is_403(gateway):
    created, token = await signup(gateway)
    headers = {"Authorization": f"Bearer {token}"}
    same = await gateway.get("/v1/users/me", headers={**headers, "X-Tenant-Id": created["tenant"]["id"]})
    assert same.status_code == 200
    other = await gateway.get("/v1/users/me", headers={**headers, "X-Tenant-Id": str(uuid.uuid4())})
    assert_problem(other, 403, "TENANT_MISMATCH")


async def test_bad_input_through_the_gateway(gateway):
    malformed = await gateway.post("/v1/tenants", content=b"{nope", headers={"content-type": "application/json"})
    assert_problem(malformed, 400, "MALFORMED_BODY")
    wrong_type = await gateway.post(
        "/v1/tenants", json={"name": ["x"], "plan": "free", "admin_email": unique_email(), "admin_password": PASSWORD}
    )
    assert "name" in [e["field"] for e in assert_problem(wrong_type, 422, "VALIDATION_FAILED")["errors"]]
    missing = await gateway.post("/v1/tenants", json={"name": "x"})
    assert_problem(missing, 422, "VALIDATION_FAILED")
    unknown = await gateway.get("/v1/nothing-here")
    assert_problem(unknown, 404, "NOT_FOUND")
    bad_id = await gateway.get("/v1/users/..%2F..%2Fhealth")
    assert bad_id.status_code in (404, 422)
    wrong_password = await gateway.post("/v1/auth/token", data={"username": unique_email(), "password": "x" * 10})
    assert_problem(wrong_password, 401, "INVALID_CREDENTIALS")
    created, _ = await signup(gateway)
    duplicate = await gateway.post(
        "/v1/tenants",
        json={"name": "x", "plan": "free", "admin_email": created["user"]["email"], "admin_password": PASSWORD},
    )
    assert_problem(duplicate, 409, "EMAIL_TAKEN")


async def test_bytes_outside_ascii_in_forwarded_headers_are_passed_on_not_a_500(gateway):
    created, token = await signup(gateway)
    auth = {"Authorization": f"Bearer {token}"}
    for name in ("accept", "if-match", "idempotency-key", "last-event-id"):
        response = await gateway.get("/v1/users/me", headers=[*auth.items(), (name, "\u00e9t\u00e9".encode())])
        assert response.status_code < 500, (name, response.text)
    anonymous = await gateway.post(
        "/v1/auth/token",
        content=f"username={created['user']['email']}&password={PASSWORD}".encode(),
        headers=[("content-type", "application/x-www-form-urlencoded; charset=\u00e9".encode())],
    )
    assert anonymous.status_code < 500, anonymous.text
    raw = await gateway.post(
        "/v1/tenants", content=b"{}", headers=[(b"content-type", b"\xff\xfe\x80abc"), (b"idempotency-key", b"\xe9")]
    )
    assert raw.status_code < 500, raw.text


async def test_oversize_bodies_are_413_before_they_are_read(gateway):
    big = b"x" * (1024 * 1024 + 1)
    declared = await gateway.post("/v1/tenants", content=big, headers={"content-type": "application/json"})
    assert_problem(declared, 413, "PAYLOAD_TOO_LARGE")

    async def chunks():
        for _ in range(40):
            yield b"x" * 65536

    streamed = await gateway.post("/v1/tenants", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(streamed, 413, "PAYLOAD_TOO_LARGE")


async def test_health_and_metrics(gateway, stack):
    assert (await gateway.get("/health/live")).json() == {"status": "ok"}
    ready = await gateway.get("/health/ready")
    assert ready.status_code == 200
    assert set(ready.json()["checks"]) == {"users", "orders", "inventory", "webhooks", "redis"}
    before = await requests_counted(gateway)
    anonymous = await gateway.get("/v1/users/me")
    assert_problem(anonymous, 401, "AUTHENTICATION_REQUIRED")
    after = await requests_counted(gateway)
    # Counted under the route's template and the status it got, once; as was the readiness probe.
    assert after[("GET", "/v1/users/me", "401")] - before[("GET", "/v1/users/me", "401")] == 1
    assert after[("GET", "/health/ready", "200")] >= 1
    for service in ("users", "orders", "inventory", "webhooks"):
        async with httpx.AsyncClient(base_url=stack.url(service)) as client:
            assert (await client.get("/health/ready")).status_code == 200
            assert "http_requests_total" in (await client.get("/metrics")).text


async def requests_counted(client: httpx.AsyncClient) -> Counter[tuple[str, str, str]]:
    """http_requests_total of a process, by (method, route, status)."""
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    counted: Counter[tuple[str, str, str]] = Counter()
    for family in text_string_to_metric_families(metrics.text):
        for sample in family.samples:
            if sample.name == "http_requests_total":
                labels = sample.labels
                counted[(labels["method"], labels["route"], labels["status"])] += sample.value
    return counted


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def is_redis(span) -> bool:
    return span.attributes.get("db.system") == "redis" or span.attributes.get("db.system.name") == "redis"


async def test_one_trace_through_gateway_users_and_sql(gateway, otlp):
    _, token = await signup(gateway)
    trace_id = os.urandom(16).hex()
    parent_span = os.urandom(8).hex()
    response = await gateway.get(
        "/v1/users/me",
        headers={"Authorization": f"Bearer {token}", "traceparent": f"00-{trace_id}-{parent_span}-01"},
    )
    assert response.status_code == 200

    wanted = {"gateway", "users"}
    # Each process exports its spans in batches of its own: wait for every span asserted on below.
    deadline = time.monotonic() + 60
    spans = []
    while time.monotonic() < deadline:
        spans = otlp.trace(trace_id)
        kinds = {(s.service, s.kind) for s in spans}
        has_sql = any(s.service == "users" and "SELECT" in s.name.upper() for s in spans)
        if {("gateway", 2), ("gateway", 3), ("users", 2)} <= kinds and has_sql:
            break
        await asyncio.sleep(0.2)
    by_id = {s.span_id: s for s in spans}
    services = {s.service for s in spans}
    assert wanted <= services, spans

    # The incoming traceparent is continued: the gateway's server span is its child.
    gateway_server = [s for s in spans if s.service == "gateway" and s.kind == 2]  # SERVER
    assert gateway_server
    assert gateway_server[0].parent_span_id == parent_span

    # Every other span hangs off a span of this trace, down to the SQL in the users service.
    for span in spans:
        if span is not gateway_server[0]:
            assert span.parent_span_id in by_id, f"{span.service}:{span.name} has a parent outside the trace"

    client_spans = [s for s in spans if s.service == "gateway" and s.kind == 3]  # CLIENT
    users_server = [s for s in spans if s.service == "users" and s.kind == 2]
    assert client_spans
    assert users_server
    assert users_server[0].parent_span_id in {c.span_id for c in client_spans}

    # The rate limiter's Redis call is an event of the gateway's server span, named by its purpose,
    # not a span of its own.
    assert "ratelimit" in gateway_server[0].events
    assert not [s.name for s in spans if is_redis(s)]

    sql = [s for s in spans if s.service == "users" and "SELECT" in s.name.upper()]
    assert sql, [s.name for s in spans if s.service == "users"]

    def ancestors(span):
        while span.parent_span_id in by_id:
            span = by_id[span.parent_span_id]
            yield span

    assert users_server[0] in list(ancestors(sql[0]))
