"""Webhooks through the whole system (real processes on PostgreSQL): the plan gate, the registry, tenant
isolation, and order events relayed into pending deliveries exactly once across a restart."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import httpx

from scripts.devstack import Stack
from tests.infra import Servers
from tests.plans import grant_plan, signup_plan

PASSWORD = "correct-horse-9"
PUBLIC_URL = "https://93.184.215.14/hooks/portico"


class Caller:
    """A user of one tenant, talking to the gateway with a bearer token."""

    def __init__(self, gateway: httpx.AsyncClient, tenant: dict, user: dict, token: str) -> None:
        self.gateway = gateway
        self.tenant = tenant
        self.user = user
        self.headers = {"Authorization": f"Bearer {token}"}

    async def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        return await self.gateway.request(method, path, headers=self.headers, **kwargs)


def unique_email(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.com"


async def login(gateway: httpx.AsyncClient, email: str) -> str:
    response = await gateway.post("/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


async def signup(gateway: httpx.AsyncClient, plan: str = "pro", infra: Servers | None = None) -> Caller:
    """A plan sign-up does not offer is given on `infra`'s users database, as an operator gives it."""
    email = unique_email("admin")
    created = await gateway.post(
        "/v1/tenants",
        json={"name": "Hooks", "plan": signup_plan(plan), "admin_email": email, "admin_password": PASSWORD},
    )
    assert created.status_code == 201, created.text
    await grant_plan(infra, created.json()["tenant"]["id"], plan)
    body = created.json()
    return Caller(gateway, body["tenant"], body["user"], await login(gateway, email))


async def member_of(admin: Caller) -> Caller:
    email = unique_email("member")
    created = await admin.request("POST", "/v1/users", json={"email": email, "password": PASSWORD, "role": "member"})
    assert created.status_code == 201, created.text
    return Caller(admin.gateway, admin.tenant, created.json(), await login(admin.gateway, email))


@dataclass
class Shop:
    """A pro tenant with a product, placing and cancelling orders through the gateway."""

    caller: Caller
    product_id: str

    @classmethod
    async def open(cls, gateway: httpx.AsyncClient) -> Shop:
        caller = await signup(gateway)
        product = await caller.request(
            "POST",
            "/v1/products",
            json={"sku": f"sku-{uuid.uuid4().hex[:8]}", "name": "Widget", "price_cents": 250, "stock": 1000},
        )
        assert product.status_code == 201, product.text
        return cls(caller, product.json()["id"])

    @property
    def tenant_id(self) -> str:
        return self.caller.tenant["id"]

    async def order(self) -> str:
        placed = await self.caller.request(
            "POST", "/v1/orders", json={"items": [{"product_id": self.product_id, "quantity": 1}]}
        )
        assert placed.status_code == 201, placed.text
        return placed.json()["id"]

    async def cancel(self, order_id: str) -> None:
        cancelled = await self.caller.request("POST", f"/v1/orders/{order_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text


def problem(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    if code is not None:
        assert body["error_code"] == code, body
    return body


def routes(endpoint_id: str) -> list[tuple[str, str, dict | None]]:
    """Every /v1/webhooks route, with a body that would be valid."""
    return [
        ("POST", "/v1/webhooks/endpoints", {"url": PUBLIC_URL, "events": ["order.created"]}),
        ("GET", "/v1/webhooks/endpoints", None),
        ("GET", f"/v1/webhooks/endpoints/{endpoint_id}", None),
        ("PATCH", f"/v1/webhooks/endpoints/{endpoint_id}", {"enabled": False}),
        ("POST", f"/v1/webhooks/endpoints/{endpoint_id}/rotate-secret", None),
        ("GET", f"/v1/webhooks/endpoints/{endpoint_id}/deliveries", None),
        ("DELETE", f"/v1/webhooks/endpoints/{endpoint_id}", None),
    ]


async def all_pages(caller: Caller, path: str, limit: int = 100) -> list[dict]:
    items, cursor = [], None
    while True:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        page = await caller.request("GET", path, params=params)
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return items


async def test_free_plan_gets_402_on_every_webhooks_route(gateway):
    free = await signup(gateway, plan="free")
    for method, path, body in routes(str(uuid.uuid4())):
        refused = problem(await free.request(method, path, json=body), 402, "PLAN_UPGRADE_REQUIRED")
        assert refused["required_plans"] == ["pro", "enterprise"]
        assert refused["current_plan"] == "free"
    # Even a request that is wrong in other ways is answered by the plan gate first.
    problem(await free.request("POST", "/v1/webhooks/endpoints", json={"url": "ftp://x"}), 402)
    anonymous = await gateway.get("/v1/webhooks/endpoints")
    problem(anonymous, 401, "AUTHENTICATION_REQUIRED")


async def test_registry_through_the_gateway(gateway, migrated):
    for plan in ("pro", "enterprise"):
        admin = await signup(gateway, plan=plan, infra=migrated)
        created = await admin.request(
            "POST", "/v1/webhooks/endpoints", json={"url": PUBLIC_URL, "events": ["order.created", "order.cancelled"]}
        )
        assert created.status_code == 201, created.text
        assert created.headers["cache-control"] == "no-store"
        endpoint = created.json()
        assert {"id", "url", "events", "secret", "enabled"} <= set(endpoint)
        assert endpoint["secret"].startswith("whsec_")
        path = f"/v1/webhooks/endpoints/{endpoint['id']}"

        listed = await admin.request("GET", "/v1/webhooks/endpoints")
        assert listed.status_code == 200
        assert [e["id"] for e in listed.json()["items"]] == [endpoint["id"]]
        assert listed.json()["next_cursor"] is None
        assert endpoint["secret"] not in listed.text
        shown = await admin.request("GET", path)
        assert shown.status_code == 200
        assert "secret" not in shown.json()

        rotated = await admin.request("POST", f"{path}/rotate-secret")
        assert rotated.status_code == 200, rotated.text
        assert rotated.headers["cache-control"] == "no-store"
        assert rotated.json()["secret"].startswith("whsec_")
        assert rotated.json()["secret"] != endpoint["secret"]

        patched = await admin.request("PATCH", path, json={"events": ["order.cancelled"]})
        assert patched.status_code == 200, patched.text
        assert patched.json()["events"] == ["order.cancelled"]

        deliveries = await admin.request("GET", f"{path}/deliveries", params={"limit": 5})
        assert deliveries.status_code == 200, deliveries.text
        assert deliveries.json() == {"items": [], "next_cursor": None}

        assert (await admin.request("DELETE", path)).status_code == 204
        problem(await admin.request("GET", path), 404, "WEBHOOK_ENDPOINT_NOT_FOUND")


async def test_bad_input_is_422_naming_the_field_and_stores_nothing(gateway):
    admin = await signup(gateway)
    for url in (
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/",
        "http://[fe80::1]/hook",
        "https://user:secret@93.184.215.14/hook",
        "ftp://93.184.215.14/hook",
    ):
        response = await admin.request("POST", "/v1/webhooks/endpoints", json={"url": url, "events": ["order.created"]})
        body = problem(response, 422, "WEBHOOK_URL_REFUSED")
        assert [e["field"] for e in body["errors"]] == ["url"], url
    unknown = await admin.request("POST", "/v1/webhooks/endpoints", json={"url": PUBLIC_URL, "events": ["order.paid"]})
    assert "events.0" in [e["field"] for e in problem(unknown, 422, "VALIDATION_FAILED")["errors"]]
    bad_cursor = await admin.request("GET", "/v1/webhooks/endpoints", params={"cursor": "nope"})
    assert [e["field"] for e in problem(bad_cursor, 422)["errors"]] == ["cursor"]
    bad_id = await admin.request("GET", "/v1/webhooks/endpoints/..%2F..%2Fhealth")
    assert bad_id.status_code in (404, 422)
    assert await all_pages(admin, "/v1/webhooks/endpoints") == []


async def test_a_member_reads_but_cannot_write(gateway):
    admin = await signup(gateway)
    member = await member_of(admin)
    created = await admin.request(
        "POST", "/v1/webhooks/endpoints", json={"url": PUBLIC_URL, "events": ["order.created"]}
    )
    endpoint_id = created.json()["id"]
    for method, path, body in routes(endpoint_id):
        response = await member.request(method, path, json=body)
        if method == "GET":
            assert response.status_code == 200, (path, response.text)
        else:
            assert problem(response, 403, "INSUFFICIENT_SCOPE")["required_scope"] == "webhooks:write"
    assert (await admin.request("GET", f"/v1/webhooks/endpoints/{endpoint_id}")).json()["enabled"] is True


async def test_no_cross_tenant_read_or_write(gateway, migrated):
    a = await signup(gateway)
    b = await signup(gateway, plan="enterprise", infra=migrated)
    made = await a.request("POST", "/v1/webhooks/endpoints", json={"url": PUBLIC_URL, "events": ["order.created"]})
    theirs = made.json()
    mine = (
        await b.request("POST", "/v1/webhooks/endpoints", json={"url": PUBLIC_URL, "events": ["order.created"]})
    ).json()
    missing = str(uuid.uuid4())
    for (method, path, body), (_, missing_path, _) in zip(routes(theirs["id"]), routes(missing), strict=True):
        if theirs["id"] not in path:
            continue
        foreign = problem(await b.request(method, path, json=body), 404)
        absent = problem(await b.request(method, missing_path, json=body), 404)
        assert foreign["error_code"] == absent["error_code"] == "WEBHOOK_ENDPOINT_NOT_FOUND"
    # B sees only its own; A's endpoint is exactly as A left it.
    assert [e["id"] for e in await all_pages(b, "/v1/webhooks/endpoints")] == [mine["id"]]
    after = await a.request("GET", f"/v1/webhooks/endpoints/{theirs['id']}")
    assert after.status_code == 200
    assert after.json()["enabled"] is True
    assert after.json()["updated_at"] == theirs["updated_at"]
    assert [e["id"] for e in await all_pages(a, "/v1/webhooks/endpoints")] == [theirs["id"]]


async def wait_for_deliveries(caller: Caller, endpoints: dict[str, dict], expected: dict[str, int]) -> dict[str, list]:
    """Each endpoint's deliveries, once there are as many as expected (the relay polls in the background)."""
    deadline = time.monotonic() + 30
    while True:
        found = {
            name: await all_pages(caller, f"/v1/webhooks/endpoints/{endpoint['id']}/deliveries")
            for name, endpoint in endpoints.items()
        }
        got = {name: len(items) for name, items in found.items()}
        if got == expected or time.monotonic() > deadline:
            assert got == expected
            return found
        await asyncio.sleep(0.2)


async def restart(stack: Stack, *, kill: bool) -> None:
    """Stops the webhooks process (SIGTERM, or SIGKILL: a crash) and starts it again."""
    if kill:
        proc = stack.procs.pop("webhooks")
        proc.kill()
        await asyncio.to_thread(proc.wait)
    else:
        await asyncio.to_thread(stack.stop_one, "webhooks")
    stack.start_one("webhooks")
    await asyncio.to_thread(stack.wait_ready, 60, "webhooks")


async def test_order_events_become_pending_deliveries_exactly_once_across_restarts(gateway, stack):
    shop = await Shop.open(gateway)
    endpoints = {}
    for name, events in (("created", ["order.created"]), ("both", ["order.created", "order.cancelled"])):
        made = await shop.caller.request("POST", "/v1/webhooks/endpoints", json={"url": PUBLIC_URL, "events": events})
        assert made.status_code == 201, made.text
        endpoints[name] = made.json()
    try:
        placed = [await shop.order() for _ in range(3)]
        await shop.cancel(placed[0])
        await wait_for_deliveries(shop.caller, endpoints, {"created": 3, "both": 4})

        # Stopped: events wait in the orders outbox and are taken when the service is back.
        await asyncio.to_thread(stack.stop_one, "webhooks")
        placed += [await shop.order() for _ in range(3)]
        for order_id in placed[1:3]:
            await shop.cancel(order_id)
        stack.start_one("webhooks")
        await asyncio.to_thread(stack.wait_ready, 60, "webhooks")

        # Killed (a crash) right after a fresh burst, wherever its relay was, then started again.
        placed += [await shop.order() for _ in range(4)]
        await shop.cancel(placed[-1])
        await restart(stack, kill=True)
        await restart(stack, kill=False)

        found = await wait_for_deliveries(shop.caller, endpoints, {"created": 10, "both": 14})
        # A few more polls change nothing: no duplicate arrives late.
        await asyncio.sleep(1.5)
        assert await wait_for_deliveries(shop.caller, endpoints, {"created": 10, "both": 14}) == found
        for name, items in found.items():
            assert len({d["event_id"] for d in items}) == len(items), name
            assert all(d["status"] == "pending" for d in items)
        assert {d["event_type"] for d in found["created"]} == {"order.created"}
        assert sorted(d["event_type"] for d in found["both"]).count("order.cancelled") == 4
        created_ids = {d["event_id"] for d in found["created"]}
        assert created_ids == {d["event_id"] for d in found["both"] if d["event_type"] == "order.created"}
    finally:
        if stack.procs.get("webhooks") is None or stack.procs["webhooks"].poll() is not None:
            stack.start_one("webhooks")
            await asyncio.to_thread(stack.wait_ready, 60, "webhooks")
