"""The webhook registry on its own, in-process, on a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import base64
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from services.webhooks.app import create_app
from services.webhooks.settings import WebhooksSettings
from services.webhooks.url_safety import DnsUnavailable, UnsafeUrl, check_url
from shared.contract import Identity
from shared.identity_token import IdentitySigner
from tests.conftest import app_client, internal_headers, settings_kwargs
from tests.infra import Servers

PUBLIC_URL = "https://93.184.215.14/hooks/portico"
WEBHOOK_SCOPES = frozenset({"webhooks:read", "webhooks:write"})
# What the registry's resolver answers in these tests: nothing depends on the machine's DNS.
DNS: dict[str, list[str]] = {
    "hooks.example.com": ["93.184.215.14", "2606:2800::1"],
    "internal.example.com": ["10.0.0.8"],
    "sneaky.example.com": ["93.184.215.14", "127.0.0.1"],
    "rebound.example.com": ["169.254.169.254"],
}


async def table_resolver(host: str, port: int) -> list[str]:
    if host == "dns-down.example.com":
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    if host not in DNS:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return DNS[host]


@pytest.fixture(scope="module")
async def webhooks_client(migrated: Servers) -> AsyncIterator[httpx.AsyncClient]:
    settings = WebhooksSettings(**settings_kwargs(migrated, "webhooks"), relay_enabled=False)
    async for client in app_client(create_app(settings, resolver=table_resolver)):
        yield client


@pytest.fixture(scope="module")
async def demo_client(migrated: Servers) -> AsyncIterator[httpx.AsyncClient]:
    settings = WebhooksSettings(**settings_kwargs(migrated, "webhooks"), relay_enabled=False, allow_private_urls=True)
    async for client in app_client(create_app(settings, resolver=table_resolver)):
        yield client


class Tenant:
    """One tenant's view of the webhooks service, as the gateway would present it."""

    def __init__(self, client: httpx.AsyncClient, signer: IdentitySigner, scopes: frozenset[str] = WEBHOOK_SCOPES):
        self.client = client
        self.identity = Identity(subject=str(uuid.uuid4()), tenant_id=str(uuid.uuid4()), scopes=scopes, plan="pro")
        self.headers = internal_headers(signer, "webhooks", self.identity)

    async def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def create(self, url: str = PUBLIC_URL, events: list[str] | None = None) -> httpx.Response:
        body = {"url": url, "events": events if events is not None else ["order.created", "order.cancelled"]}
        return await self.request("POST", "/endpoints", json=body)

    async def created(self, url: str = PUBLIC_URL, events: list[str] | None = None) -> dict:
        response = await self.create(url, events)
        assert response.status_code == 201, response.text
        return response.json()

    async def all_endpoints(self) -> list[dict]:
        items, cursor = [], None
        while True:
            page = await self.request(
                "GET", "/endpoints", params={"limit": 100, **({"cursor": cursor} if cursor else {})}
            )
            assert page.status_code == 200, page.text
            items += page.json()["items"]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                return items


def problem(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    if code is not None:
        assert body["error_code"] == code, body
    return body


def error_fields(body: dict) -> list[str]:
    return [e["field"] for e in body.get("errors", [])]


def assert_secret(secret: str) -> None:
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32


async def test_create_shows_the_secret_once(webhooks_client, signer):
    tenant = Tenant(webhooks_client, signer)
    response = await tenant.create(events=["order.cancelled", "order.created", "order.cancelled"])
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert {"id", "url", "events", "secret", "enabled", "created_at", "updated_at"} <= set(body)
    assert body["url"] == PUBLIC_URL
    assert body["events"] == ["order.cancelled", "order.created"]
    assert body["enabled"] is True
    assert body["status"] == "active"
    assert_secret(body["secret"])

    one = await tenant.request("GET", f"/endpoints/{body['id']}")
    assert one.status_code == 200
    assert "secret" not in one.json()
    assert body["secret"] not in one.text
    listed = await tenant.request("GET", "/endpoints")
    assert listed.status_code == 200
    assert [item["id"] for item in listed.json()["items"]] == [body["id"]]
    assert "secret" not in listed.json()["items"][0]
    assert body["secret"] not in listed.text
    assert listed.json()["next_cursor"] is None

    second = await tenant.created()
    assert second["secret"] != body["secret"]


async def test_rotate_secret_returns_a_new_one_once(webhooks_client, signer):
    tenant = Tenant(webhooks_client, signer)
    created = await tenant.created()
    before = datetime.now(UTC)
    rotated = await tenant.request("POST", f"/endpoints/{created['id']}/rotate-secret")
    assert rotated.status_code == 200, rotated.text
    assert rotated.headers["cache-control"] == "no-store"
    body = rotated.json()
    assert body["id"] == created["id"]
    assert_secret(body["secret"])
    assert body["secret"] != created["secret"]
    grace_ends = datetime.fromisoformat(body["previous_secret_expires_at"])
    assert before + timedelta(hours=23) < grace_ends <= datetime.now(UTC) + timedelta(hours=24)
    again = await tenant.request("POST", f"/endpoints/{created['id']}/rotate-secret")
    assert again.json()["secret"] not in (created["secret"], body["secret"])
    shown = await tenant.request("GET", f"/endpoints/{created['id']}")
    assert "secret" not in shown.json()
    missing = await tenant.request("POST", f"/endpoints/{uuid.uuid4()}/rotate-secret")
    problem(missing, 404, "WEBHOOK_ENDPOINT_NOT_FOUND")


async def test_update_changes_only_what_is_sent(webhooks_client, signer):
    tenant = Tenant(webhooks_client, signer)
    created = await tenant.created(events=["order.created"])
    path = f"/endpoints/{created['id']}"

    disabled = await tenant.request("PATCH", path, json={"enabled": False})
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["enabled"] is False
    assert disabled.json()["events"] == ["order.created"]
    assert disabled.json()["url"] == PUBLIC_URL

    changed = await tenant.request(
        "PATCH", path, json={"url": "https://1.1.1.1/v2/hooks", "events": ["order.cancelled"], "enabled": True}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["url"] == "https://1.1.1.1/v2/hooks"
    assert changed.json()["events"] == ["order.cancelled"]
    assert changed.json()["enabled"] is True
    assert "secret" not in changed.json()

    for bad, field in (
        ({"url": "http://127.0.0.1/x"}, "url"),
        ({"url": None}, "url"),
        ({"enabled": None}, "enabled"),
        ({"events": []}, "events"),
        ({"events": ["order.shipped"]}, "events.0"),
        ({"secret": "whsec_mine"}, "secret"),
    ):
        assert field in error_fields(problem(await tenant.request("PATCH", path, json=bad), 422)), bad
    unchanged = await tenant.request("GET", path)
    assert unchanged.json() == changed.json()


async def test_delete_removes_the_endpoint(webhooks_client, signer):
    tenant = Tenant(webhooks_client, signer)
    created = await tenant.created()
    path = f"/endpoints/{created['id']}"
    deleted = await tenant.request("DELETE", path)
    assert deleted.status_code == 204
    assert deleted.content == b""
    problem(await tenant.request("GET", path), 404, "WEBHOOK_ENDPOINT_NOT_FOUND")
    problem(await tenant.request("DELETE", path), 404, "WEBHOOK_ENDPOINT_NOT_FOUND")
    problem(await tenant.request("GET", f"{path}/deliveries"), 404, "WEBHOOK_ENDPOINT_NOT_FOUND")
    assert await tenant.all_endpoints() == []


async def test_list_pages_with_a_cursor(webhooks_client, signer):
    tenant = Tenant(webhooks_client, signer)
    ids = [(await tenant.created())["id"] for _ in range(5)]
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await tenant.request("GET", "/endpoints", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= 2
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids))  # newest first, each once

    for params, field in (
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b'["yesterday", 1]').decode()}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "many"}, "limit"),
    ):
        body = problem(await tenant.request("GET", "/endpoints", params=params), 422)
        assert field in error_fields(body), body
        body = problem(await tenant.request("GET", f"/endpoints/{ids[0]}/deliveries", params=params), 422)
        assert field in error_fields(body), body


UNSAFE_URLS = [
    ("http://127.0.0.1/hook", "loopback"),
    ("http://127.8.9.10:8080/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://localhost:8000/hook", "loopback"),
    ("http://api.localhost/hook", "loopback"),
    ("http://2130706433/hook", "loopback"),  # 127.0.0.1 written as one number
    ("http://0x7f.1/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),  # IPv4-mapped
    ("http://[2002:7f00:1::]/hook", "loopback"),  # 6to4 around 127.0.0.1
    ("http://[::127.0.0.1]/hook", "loopback"),  # IPv4-compatible
    ("http://[::ffff:0:7f00:1]/hook", "loopback"),  # IPv4-translated
    ("http://[2001:20::1]/hook", "reserved"),  # ORCHIDv2
    ("http://192.0.0.9/hook", "reserved"),  # PCP anycast
    ("http://10.1.2.3/hook", "private"),
    ("http://172.16.0.1/hook", "private"),
    ("http://192.168.1.20/hook", "private"),
    ("http://100.64.0.1/hook", "private"),
    ("http://[fd12:3456::1]/hook", "private"),
    ("http://[64:ff9b::c0a8:101]/hook", "private"),  # NAT64 around 192.168.1.1
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "metadata"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
    ("http://169.254.12.34/hook", "link-local"),
    ("http://[fe80::1]/hook", "link-local"),
    ("http://[fe80::1%25eth0]/hook", "link-local"),
    ("http://224.0.0.251/hook", "multicast"),
    ("http://[ff02::1]/hook", "multicast"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://[::]/hook", "unspecified"),
    ("http://203.0.113.7/hook", "reserved"),  # documentation range
    ("http://255.255.255.255/hook", "reserved"),
    ("https://user:pass@93.184.215.14/hook", "credentials"),
    ("https://token@93.184.215.14/hook", "credentials"),
    ("https://:pass@93.184.215.14/hook", "credentials"),
    ("ftp://93.184.215.14/hook", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("javascript:alert(1)", "scheme"),
    ("gopher://93.184.215.14:70/_hook", "scheme"),
    ("93.184.215.14/hook", "scheme"),
    ("https://internal.example.com/hook", "private"),  # names are judged by what they resolve to
    ("https://sneaky.example.com/hook", "loopback"),  # every address, not just the first
    ("https://rebound.example.com/hook", "metadata"),
    ("https:///hook", "syntax"),
    ("https://93.184.215.14:0/hook", "syntax"),
    ("https://93.184.215.14:99999/hook", "syntax"),
    ("https://exa mple.com/hook", "syntax"),
    ("https://93.184.215.14/hook#frag", "syntax"),
    ("https://[::1/hook", "syntax"),
    ("https://bad..name.com/hook", "syntax"),
]


@pytest.mark.parametrize(("url", "kind"), UNSAFE_URLS)
async def test_unsafe_urls_are_422_naming_url_and_store_nothing(webhooks_client, signer, url, kind):
    tenant = Tenant(webhooks_client, signer)
    body = problem(await tenant.create(url=url), 422, "WEBHOOK_URL_REFUSED")
    assert body["errors"] == [{"loc": ["body", "url"], "field": "url", "msg": body["detail"], "type": f"url.{kind}"}], (
        body
    )
    assert await tenant.all_endpoints() == []


async def test_a_host_name_that_does_not_resolve_yet_is_accepted(webhooks_client, signer):
    """Registration refuses only what it can show to be non-public; every delivery checks again."""
    tenant = Tenant(webhooks_client, signer)
    for url in (
        "https://not-yet.example.com/hook",  # no such name (yet)
        "https://dns-down.example.com/hook",  # the resolver failing is not the URL's fault either
        "https://hooks.example.com/hook",  # resolves, to public addresses only
    ):
        assert (await tenant.create(url=url)).status_code == 201, url
    assert len(await tenant.all_endpoints()) == 3


async def test_status_and_its_older_shape_enabled(webhooks_client, signer):
    tenant = Tenant(webhooks_client, signer)
    created = await tenant.created()
    path = f"/endpoints/{created['id']}"
    disabled = await tenant.request("PATCH", path, json={"status": "disabled"})
    assert disabled.status_code == 200, disabled.text
    assert (disabled.json()["status"], disabled.json()["enabled"]) == ("disabled", False)
    enabled = await tenant.request("PATCH", path, json={"enabled": True})
    assert (enabled.json()["status"], enabled.json()["enabled"]) == ("active", True)
    both = await tenant.request("PATCH", path, json={"status": "disabled", "enabled": False})
    assert both.json()["status"] == "disabled"
    body = problem(await tenant.request("PATCH", path, json={"status": "active", "enabled": False}), 422)
    assert "status and enabled disagree" in body["errors"][0]["msg"]
    for bad in ({"status": "paused"}, {"status": None}):
        assert "status" in error_fields(problem(await tenant.request("PATCH", path, json=bad), 422)), bad
    assert (await tenant.request("GET", path)).json()["status"] == "disabled"

    born_disabled = await tenant.request(
        "POST", "/endpoints", json={"url": PUBLIC_URL, "events": ["order.created"], "status": "disabled"}
    )
    assert (born_disabled.json()["status"], born_disabled.json()["enabled"]) == ("disabled", False)
    old_shape = await tenant.request(
        "POST", "/endpoints", json={"url": PUBLIC_URL, "events": ["order.created"], "enabled": False}
    )
    assert (old_shape.json()["status"], old_shape.json()["enabled"]) == ("disabled", False)


async def test_bad_bodies_are_422_naming_the_field_and_store_nothing(webhooks_client, signer):
    tenant = Tenant(webhooks_client, signer)
    for body, field in (
        ({"url": PUBLIC_URL, "events": ["order.shipped"]}, "events.0"),
        ({"url": PUBLIC_URL, "events": ["order.created", "ORDER.CREATED"]}, "events.1"),
        ({"url": PUBLIC_URL, "events": []}, "events"),
        ({"url": PUBLIC_URL, "events": "order.created"}, "events"),
        ({"url": PUBLIC_URL}, "events"),
        ({"events": ["order.created"]}, "url"),
        ({"url": "", "events": ["order.created"]}, "url"),
        ({"url": "https://93.184.215.14/" + "a" * 2048, "events": ["order.created"]}, "url"),
        ({"url": 42, "events": ["order.created"]}, "url"),
        ({"url": PUBLIC_URL, "events": ["order.created"], "secret": "whsec_mine"}, "secret"),
        ({"url": PUBLIC_URL, "events": ["order.created"], "enabled": "maybe"}, "enabled"),
    ):
        response = await tenant.request("POST", "/endpoints", json=body)
        assert field in error_fields(problem(response, 422, "VALIDATION_FAILED")), (body, response.text)
    malformed = await tenant.request(
        "POST", "/endpoints", content=b'{"url": ', headers={"content-type": "application/json"}
    )
    problem(malformed, 400, "MALFORMED_BODY")
    assert await tenant.all_endpoints() == []


async def test_recover_refuses_a_since_no_datetime_holds_in_utc_naming_it(webhooks_client, signer):
    """An offset can carry a time before year 1 or after 9999 once in UTC: a 422 naming `since`,
    where the database layer would fail with a 500 (and the gateway a 502)."""
    tenant = Tenant(webhooks_client, signer)
    path = f"/endpoints/{(await tenant.created())['id']}/recover"
    for since in ("0001-01-01T00:00:00+14:00", "0001-01-01T00:59:59.999999+01:00"):
        body = problem(await tenant.request("POST", path, json={"since": since}), 422, "VALIDATION_FAILED")
        assert error_fields(body) == ["since"], body
    # The earliest time there is, in any offset that keeps it there, is a time like another.
    for since in ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00-14:00"):
        recovered = await tenant.request("POST", path, json={"since": since})
        assert recovered.status_code == 202, recovered.text
        assert recovered.json() == {"requeued": 0}


async def test_scopes_are_enforced(webhooks_client, signer):
    owner = Tenant(webhooks_client, signer)
    created = await owner.created()
    path = f"/endpoints/{created['id']}"
    reader = Tenant(webhooks_client, signer, scopes=frozenset({"webhooks:read"}))
    reader.identity = Identity(subject="reader", tenant_id=owner.identity.tenant_id, scopes=reader.identity.scopes)
    reader.headers = internal_headers(signer, "webhooks", reader.identity)
    assert (await reader.request("GET", path)).status_code == 200
    assert (await reader.request("GET", f"{path}/deliveries")).status_code == 200
    for method, target, body in (
        ("POST", "/endpoints", {"url": PUBLIC_URL, "events": ["order.created"]}),
        ("PATCH", path, {"enabled": False}),
        ("POST", f"{path}/rotate-secret", None),
        ("DELETE", path, None),
    ):
        refused = problem(await reader.request(method, target, json=body), 403, "INSUFFICIENT_SCOPE")
        assert refused["required_scope"] == "webhooks:write"
    nobody = Tenant(webhooks_client, signer, scopes=frozenset({"orders:read"}))
    for target in ("/endpoints", path, f"{path}/deliveries"):
        problem(await nobody.request("GET", target), 403, "INSUFFICIENT_SCOPE")
    assert (await owner.request("GET", path)).json()["enabled"] is True


async def test_another_tenants_endpoint_is_404_like_a_missing_one(webhooks_client, signer):
    a = Tenant(webhooks_client, signer)
    b = Tenant(webhooks_client, signer)
    theirs = await a.created()
    mine = await b.created()
    for method, suffix, body in (
        ("GET", "", None),
        ("PATCH", "", {"enabled": False, "url": "https://1.1.1.1/stolen"}),
        ("POST", "/rotate-secret", None),
        ("GET", "/deliveries", None),
        ("DELETE", "", None),
    ):
        foreign = problem(await b.request(method, f"/endpoints/{theirs['id']}{suffix}", json=body), 404)
        missing_id = str(uuid.uuid4())
        missing = problem(await b.request(method, f"/endpoints/{missing_id}{suffix}", json=body), 404)
        assert foreign["error_code"] == missing["error_code"] == "WEBHOOK_ENDPOINT_NOT_FOUND"
        assert foreign["detail"].replace(theirs["id"], missing_id) == missing["detail"]
    assert [e["id"] for e in await b.all_endpoints()] == [mine["id"]]
    after = await a.request("GET", f"/endpoints/{theirs['id']}")
    assert after.status_code == 200
    untouched = {k: v for k, v in theirs.items() if k != "secret"}
    untouched.pop("previous_secret_expires_at")
    assert after.json() == untouched


async def test_endpoint_limit_per_tenant_is_409(migrated, signer):
    settings = WebhooksSettings(
        **settings_kwargs(migrated, "webhooks"), relay_enabled=False, max_endpoints_per_tenant=3
    )
    async for client in app_client(create_app(settings)):
        tenant = Tenant(client, signer)
        for _ in range(3):
            await tenant.created()
        problem(await tenant.create(), 409, "WEBHOOK_ENDPOINT_LIMIT_REACHED")
        assert len(await tenant.all_endpoints()) == 3
        # Other tenants have limits of their own.
        await Tenant(client, signer).created()


async def test_private_urls_allowed_only_for_demos(demo_client, signer):
    tenant = Tenant(demo_client, signer)
    for url in ("http://127.0.0.1:9000/hook", "http://localhost:9000/hook", "http://10.0.0.7/hook", "http://[::1]/h"):
        assert (await tenant.create(url=url)).status_code == 201, url
    for url, kind in (
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://metadata.google.internal/", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://169.254.1.1/hook", "link-local"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://0.0.0.0:9000/hook", "unspecified"),
        ("https://user:pw@127.0.0.1/hook", "credentials"),
        ("ftp://127.0.0.1/hook", "scheme"),
    ):
        body = problem(await tenant.create(url=url), 422, "WEBHOOK_URL_REFUSED")
        assert body["errors"][0]["type"] == f"url.{kind}", url
    assert len(await tenant.all_endpoints()) == 4


def resolver_of(*answers: str):
    async def resolve(host: str, port: int) -> list[str]:
        return list(answers)

    return resolve


async def test_every_resolved_address_is_checked():
    checked = await check_url("https://hooks.example.com/x", resolver=resolver_of("93.184.215.14", "2606:2800::1"))
    assert checked.host == "hooks.example.com"
    assert checked.port == 443
    assert [str(a) for a in checked.addresses] == ["93.184.215.14", "2606:2800::1"]
    for answers, kind in (
        (("93.184.215.14", "10.0.0.1"), "private"),
        (("2606:2800::1", "::1"), "loopback"),
        (("93.184.215.14", "169.254.169.254"), "metadata"),
        (("fe80::1%eth0",), "link-local"),
        ((), "unresolvable"),
    ):
        with pytest.raises(UnsafeUrl) as refused:
            await check_url("https://hooks.example.com/x", resolver=resolver_of(*answers))
        assert refused.value.kind == kind, answers
    # A demo setting opens private networks, never the metadata service.
    await check_url("http://hooks.example.com/x", allow_private=True, resolver=resolver_of("10.0.0.1", "::1"))
    with pytest.raises(UnsafeUrl):
        await check_url(
            "http://x.example.com/", allow_private=True, resolver=resolver_of("10.0.0.1", "169.254.169.254")
        )


async def test_dns_trouble_is_not_blamed_on_the_url():
    async def temporary_failure(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    async def hanging(host: str, port: int) -> list[str]:
        await asyncio.sleep(10)
        return []

    async def no_such_host(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(DnsUnavailable):
        await check_url("https://hooks.example.com/", resolver=temporary_failure)
    with pytest.raises(DnsUnavailable):
        await check_url("https://hooks.example.com/", resolver=hanging, dns_timeout=0.05)
    with pytest.raises(UnsafeUrl) as refused:
        await check_url("https://hooks.example.com/", resolver=no_such_host)
    assert refused.value.kind == "unresolvable"
