"""The gateway when what it depends on fails part-way: the users service answering API-key lookups
with 5xx or garbage, the idempotency store (Redis) cut after the answer or before the release, and a
client that goes away in the middle of its body.

The gateway runs in-process in front of the stack's services; failures come from fault injectors
(`tests.faults`): an HTTP proxy in front of the users service and a TCP proxy in front of Redis.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Message

from gateway.app import create_app
from scripts.devstack import Stack
from tests.conftest import running_app
from tests.edge_support import PASSWORD, gateway_settings, http_scope, in_process_gateway, signup, unique_prefix
from tests.faults import HttpFaultProxy, TcpProxy, eventually
from tests.infra import Servers
from tests.orders_support import assert_problem

RESOLVE = ("POST", "/api-keys/resolve")
CREATE_USER = ("POST", "/users")


@pytest.fixture
async def users_proxy(stack: Stack) -> AsyncIterator[HttpFaultProxy]:
    async with HttpFaultProxy(stack.url("users")) as proxy:
        yield proxy


@pytest.fixture
async def redis_proxy(infra: Servers) -> AsyncIterator[TcpProxy]:
    redis = urlsplit(infra.redis_url)
    async with TcpProxy((redis.hostname or "127.0.0.1", redis.port or 6379)) as proxy:
        yield proxy


def new_user() -> dict:
    return {"email": f"faults-{uuid.uuid4().hex[:12]}@example.com", "password": PASSWORD, "role": "member"}


@pytest.mark.parametrize(
    "fault",
    [
        {"action": "answer", "status": 500, "body": b'{"detail": "boom"}'},
        {"action": "answer", "status": 418, "body": b"{}"},
        {"action": "answer", "status": 200, "body": b"<html>garbage"},
        {"action": "answer", "status": 200, "body": b'["a", "list"]'},
        {"action": "answer", "status": 200, "body": b'{"id": "k", "tenant_id": "t"}'},
        {"action": "answer", "status": 200, "body": b'{"id": "k", "tenant_id": "t", "scopes": [], "plan": "pro", '
         b'"expires_at": "not a date"}'},
    ],
    ids=["5xx", "unexpected-status", "not-json", "not-an-object", "fields-missing", "bad-expiry"],
)  # fmt: skip
async def test_an_api_key_lookup_the_users_service_fails_is_502_and_not_cached(
    stack: Stack, users_proxy: HttpFaultProxy, fault: dict
):
    settings = gateway_settings(stack, users_url=users_proxy.url, rate_limit_enabled=False)
    key = {"X-API-Key": "sk_" + secrets.token_urlsafe(32)}
    async with in_process_gateway(settings) as gateway:
        lookup = users_proxy.add(*RESOLVE, **fault)
        failed = await gateway.get("/v1/users/me", headers=key)
        body = assert_problem(failed, 502, "DOWNSTREAM_BAD_RESPONSE")
        assert body["service"] == "users"
        assert lookup.hits == 1
        # The failure is not remembered: once the users service answers, the key is judged on its answer.
        users_proxy.clear()
        assert_problem(await gateway.get("/v1/users/me", headers=key), 401, "INVALID_API_KEY")


async def test_an_api_key_lookup_that_cannot_reach_the_users_service_is_503(stack: Stack, users_proxy: HttpFaultProxy):
    settings = gateway_settings(stack, users_url=users_proxy.url, rate_limit_enabled=False)
    async with in_process_gateway(settings) as gateway:
        users_proxy.add(*RESOLVE, action="drop")
        failed = await gateway.get("/v1/users/me", headers={"X-API-Key": "sk_" + secrets.token_urlsafe(32)})
        assert_problem(failed, 503, "DOWNSTREAM_UNAVAILABLE")


async def test_an_api_key_lookup_carries_the_requests_id(stack: Stack, users_proxy: HttpFaultProxy):
    settings = gateway_settings(stack, users_url=users_proxy.url, rate_limit_enabled=False)
    async with in_process_gateway(settings) as gateway:
        request_id = f"lookup-{uuid.uuid4().hex}"
        key = {"X-API-Key": "sk_" + secrets.token_urlsafe(32), "X-Request-ID": request_id}
        assert_problem(await gateway.get("/v1/users/me", headers=key), 401, "INVALID_API_KEY")
    [lookup] = [headers for method, target, headers in users_proxy.received if (method, target) == RESOLVE]
    assert ("x-request-id", request_id) in lookup


async def store_errors(gateway: httpx.AsyncClient) -> float:
    """The gateway's count of idempotency store failures (failing open)."""
    text = (await gateway.get("/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "gateway_store_errors_total" and sample.labels.get("stage") == "idempotency"
    )


def store_settings(stack: Stack, infra: Servers, users_proxy: HttpFaultProxy, redis_proxy: TcpProxy) -> dict:
    return {
        "users_url": users_proxy.url,
        "redis_url": f"redis://127.0.0.1:{redis_proxy.port}/0",
        "redis_key_prefix": unique_prefix(infra.redis_prefix),
        "redis_timeout_seconds": 1,
        "rate_limit_enabled": False,
        "http_timeout_seconds": 10,
        "idempotency_lock_seconds": 12,
    }


async def test_a_store_cut_after_the_answer_keeps_the_answer_and_the_lock(
    stack: Stack, infra: Servers, users_proxy: HttpFaultProxy, redis_proxy: TcpProxy
):
    """The claim was taken; the store fails before the answer can be kept. The client still gets its
    answer; a retry meets the claim (409) until it expires, and the request is never run twice at once."""
    settings = gateway_settings(stack, **store_settings(stack, infra, users_proxy, redis_proxy))
    async with in_process_gateway(settings) as gateway:
        admin = await signup(gateway)
        body = new_user()
        headers = {**admin.auth, "Idempotency-Key": str(uuid.uuid4())}
        held = users_proxy.add(*CREATE_USER, action="forward", hold=True, times=1)
        creating = asyncio.create_task(gateway.post("/v1/users", json=body, headers=headers))
        await asyncio.wait_for(held.seen.wait(), 60)
        redis_proxy.cut()
        held.release()
        created = await creating
        assert created.status_code == 201, created.text
        assert "idempotent-replayed" not in created.headers

        redis_proxy.restore()
        # The answer was not kept and the claim still stands: the retry is told to wait, not run.
        retry = await gateway.post("/v1/users", json=body, headers=headers)
        assert_problem(retry, 409, "IDEMPOTENCY_KEY_IN_USE")
        assert [f for f in users_proxy.forwarded if f[0] == "POST" and f[1] == "/users"] == [("POST", "/users", 201)]
        assert await store_errors(gateway) == 1


async def test_a_store_cut_before_the_release_still_answers(
    stack: Stack, infra: Servers, users_proxy: HttpFaultProxy, redis_proxy: TcpProxy
):
    """An answer that is not kept (here a 5xx of the service) releases the claim; the store failing
    then changes nothing for the client, and the key is usable again once the claim expires."""
    overrides = store_settings(stack, infra, users_proxy, redis_proxy)
    settings = gateway_settings(stack, **overrides)
    async with in_process_gateway(settings) as gateway:
        admin = await signup(gateway)
        body = new_user()
        headers = {**admin.auth, "Idempotency-Key": str(uuid.uuid4())}
        held = users_proxy.add(*CREATE_USER, action="answer", status=500, hold=True, times=1)
        failing = asyncio.create_task(gateway.post("/v1/users", json=body, headers=headers))
        await asyncio.wait_for(held.seen.wait(), 60)
        redis_proxy.cut()
        held.release()
        assert_problem(await failing, 502, "DOWNSTREAM_BAD_RESPONSE")
        redis_proxy.restore()

        async def runs_again() -> bool:
            answer = await gateway.post("/v1/users", json=body, headers=headers)
            if answer.status_code == 409:
                assert answer.json()["error_code"] == "IDEMPOTENCY_KEY_IN_USE"
                return False
            assert answer.status_code == 201, answer.text
            return True

        await eventually(runs_again, timeout=60, interval=0.5)


async def test_a_service_saying_its_key_is_in_use_is_not_kept_for_the_key(stack: Stack, users_proxy: HttpFaultProxy):
    """The service's own 409 IDEMPOTENCY_KEY_IN_USE (its first attempt with the key is still being
    undone, `Retry-After: 1`) says when to try again: the gateway passes it on and releases the key,
    so the retry runs instead of meeting that 409 again for the key's lifetime."""
    settings = gateway_settings(stack, users_url=users_proxy.url, rate_limit_enabled=False)
    async with in_process_gateway(settings) as gateway:
        admin = await signup(gateway)
        body = new_user()
        headers = {**admin.auth, "Idempotency-Key": str(uuid.uuid4())}
        in_use = (
            b'{"type":"about:blank","title":"Idempotency-Key in use","status":409,'
            b'"error_code":"IDEMPOTENCY_KEY_IN_USE","request_id":"in-use",'
            b'"detail":"A request with this Idempotency-Key is still being processed; retry shortly."}'
        )
        users_proxy.add(
            *CREATE_USER,
            action="answer",
            status=409,
            body=in_use,
            content_type="application/problem+json",
            headers=[("retry-after", "1")],
            times=1,
        )
        busy = await gateway.post("/v1/users", json=body, headers=headers)
        assert_problem(busy, 409, "IDEMPOTENCY_KEY_IN_USE")
        assert busy.headers["retry-after"] == "1"
        retry = await gateway.post("/v1/users", json=body, headers=headers)
        assert retry.status_code == 201, retry.text
        assert "idempotent-replayed" not in retry.headers
        again = await gateway.post("/v1/users", json=body, headers=headers)
        assert again.status_code == 201
        assert again.headers["idempotent-replayed"] == "true"
        assert [f for f in users_proxy.forwarded if f[:2] == CREATE_USER] == [("POST", "/users", 201)]


async def test_a_keyed_write_whose_client_leaves_runs_to_its_end_and_is_replayed(
    stack: Stack, users_proxy: HttpFaultProxy
):
    """The client of a keyed write goes away while the service holds it. The service may have done
    the work already, so the gateway does not cancel its call: it keeps the answer, and the client's
    retry with the key is handed it instead of running the write again."""
    settings = gateway_settings(stack, users_url=users_proxy.url, rate_limit_enabled=False)
    app = create_app(settings)
    async with running_app(app) as (gateway, state):
        admin = await signup(gateway)
        body = new_user()
        headers = {**admin.auth, "Idempotency-Key": str(uuid.uuid4())}
        request = gateway.build_request("POST", "/v1/users", json=body, headers=headers)
        held = users_proxy.add(*CREATE_USER, action="forward", hold=True, times=1)
        leave, left = asyncio.Event(), asyncio.Event()
        incoming: list[Message] = [{"type": "http.request", "body": request.content, "more_body": False}]
        answer: list[Message] = []

        async def receive() -> Message:
            if incoming:
                return incoming.pop()
            await leave.wait()
            left.set()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            answer.append(message)

        first = asyncio.create_task(app(http_scope(request, state), receive, send))
        await asyncio.wait_for(held.seen.wait(), 60)
        leave.set()
        # The gateway has read the disconnect (and, before, cancelled its call right then).
        await left.wait()
        held.release()
        await asyncio.wait_for(first, 60)
        assert [message["type"] for message in answer[:1]] == ["http.response.start"]
        assert answer[0]["status"] == 201
        created = json.loads(b"".join(message.get("body", b"") for message in answer[1:]))

        retry = await gateway.post("/v1/users", json=body, headers=headers)
        assert retry.status_code == 201, retry.text
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.json()["id"] == created["id"]
        assert [f for f in users_proxy.forwarded if f[:2] == CREATE_USER] == [("POST", "/users", 201)]
        # Still counted as the client's own outcome (nginx's 499), not as the answer nobody read.
        text = (await gateway.get("/metrics")).text
        answered = {
            sample.labels["status"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "http_requests_total"
            and (sample.labels["method"], sample.labels["route"]) == ("POST", "/v1/users")
        }
        assert answered == {"client_closed": 1.0, "201": 1.0}


async def test_a_client_gone_mid_body_leaves_no_claim(stack: Stack):
    """A client that sends half its body and disconnects: nothing was claimed, so the whole request
    with the same key runs at once, on the stack's real gateway process."""
    async with httpx.AsyncClient(base_url=stack.url(), timeout=30) as gateway:
        admin = await signup(gateway)
        body = new_user()
        key = str(uuid.uuid4())
        payload = httpx.Request("POST", "/", json=body).content
        host = urlsplit(stack.url())
        _, writer = await asyncio.open_connection(host.hostname, host.port)
        head = (
            f"POST /v1/users HTTP/1.1\r\nHost: {host.netloc}\r\nAuthorization: Bearer {admin.token}\r\n"
            f"Idempotency-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        writer.write(head.encode() + payload[: len(payload) // 2])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

        created = await gateway.post("/v1/users", json=body, headers={**admin.auth, "Idempotency-Key": key})
        assert created.status_code == 201, created.text
        assert "idempotent-replayed" not in created.headers
        replay = await gateway.post("/v1/users", json=body, headers={**admin.auth, "Idempotency-Key": key})
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.json()["id"] == created.json()["id"]
