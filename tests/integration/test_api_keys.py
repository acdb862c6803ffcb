"""API keys in the users service (in-process, real PostgreSQL): issuing, listing, revoking, rotating,
and resolving a key's hash into an identity for the gateway."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from datetime import datetime

import asyncpg
import httpx
import pytest

from shared.contract import ALL_SCOPES, ANONYMOUS, API_KEY_RE, ROLE_SCOPES, Identity, hash_api_key, key_subject
from shared.identity_token import IdentitySigner
from tests.conftest import internal_headers
from tests.infra import Servers
from tests.plans import grant_plan

PASSWORD = "correct-horse-9"


def unique_email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.com"


class Caller:
    def __init__(self, client: httpx.AsyncClient, signer: IdentitySigner, identity: Identity) -> None:
        self.client = client
        self.signer = signer
        self.identity = identity

    @property
    def headers(self) -> dict[str, str]:
        return internal_headers(self.signer, "users", self.identity)

    async def create(self, name: str = "ci", scopes: list[str] | None = None) -> httpx.Response:
        return await self.client.post(
            "/api-keys", json={"name": name, "scopes": scopes or ["orders:read"]}, headers=self.headers
        )

    async def created(self, name: str = "ci", scopes: list[str] | None = None) -> dict:
        response = await self.create(name, scopes)
        assert response.status_code == 201, response.text
        return response.json()


async def resolve(client: httpx.AsyncClient, signer: IdentitySigner, raw: str) -> httpx.Response:
    return await client.post(
        "/api-keys/resolve",
        json={"key_hash": hash_api_key(raw)},
        headers=internal_headers(signer, "users", ANONYMOUS),
    )


async def tenant_admin(client: httpx.AsyncClient, signer: IdentitySigner, plan: str = "pro") -> Caller:
    response = await client.post(
        "/tenants",
        json={"name": "Keys", "plan": plan, "admin_email": unique_email("admin"), "admin_password": PASSWORD},
        headers=internal_headers(signer, "users", ANONYMOUS),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    identity = Identity(
        subject=body["user"]["id"],
        tenant_id=body["tenant"]["id"],
        scopes=ROLE_SCOPES["admin"],
        plan=plan,
        role="admin",
    )
    return Caller(client, signer, identity)


async def member_of(admin: Caller) -> Caller:
    response = await admin.client.post(
        "/users", json={"email": unique_email("member"), "password": PASSWORD, "role": "member"}, headers=admin.headers
    )
    assert response.status_code == 201, response.text
    identity = Identity(
        subject=response.json()["id"],
        tenant_id=admin.identity.tenant_id,
        scopes=ROLE_SCOPES["member"],
        plan=admin.identity.plan,
        role="member",
    )
    return Caller(admin.client, admin.signer, identity)


async def db_rows(infra: Servers, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(infra.database_dsn("users"))
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def test_a_new_key_is_shown_once_and_only_its_hash_is_stored(users_client, signer, migrated):
    admin = await tenant_admin(users_client, signer)
    response = await admin.create("deploy bot", ["orders:write", "orders:read", "orders:read"])
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert {"id", "api_key", "scopes"} <= set(body)
    raw = body["api_key"]
    assert API_KEY_RE.match(raw)
    assert body["scopes"] == ["orders:read", "orders:write"]
    assert body["hint"] == raw[-4:]
    assert body["created_by"] == admin.identity.subject
    assert body["tenant_id"] == admin.identity.tenant_id

    rows = await db_rows(migrated, "SELECT * FROM api_keys WHERE id = $1", body["id"])
    assert len(rows) == 1
    row = dict(rows[0])
    assert row["key_hash"] == hashlib.sha256(raw.encode()).hexdigest()
    assert not any(raw in str(value) for value in row.values())
    assert row["name"] == "deploy bot"


async def test_keys_are_random_and_unique(users_client, signer):
    admin = await tenant_admin(users_client, signer)
    keys = await asyncio.gather(*(admin.created(f"k{i}") for i in range(10)))
    raws = {k["api_key"] for k in keys}
    assert len(raws) == 10
    assert len({k["id"] for k in keys}) == 10


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "scopes": ["orders:read", "root"]}, "scopes"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "", "scopes": ["orders:read"]}, "name"),
        ({"name": "x" * 101, "scopes": ["orders:read"]}, "name"),
        ({"name": "x", "scopes": "orders:read"}, "scopes"),
        ({"scopes": ["orders:read"]}, "name"),
        ({"name": "x", "scopes": ["orders:read"], "api_key": "sk_chosen"}, "api_key"),
    ],
)
async def test_invalid_key_requests_are_422_and_create_nothing(users_client, signer, migrated, body, field):
    admin = await tenant_admin(users_client, signer)
    response = await users_client.post("/api-keys", json=body, headers=admin.headers)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["error_code"] == "VALIDATION_FAILED"
    assert field in [e["field"] for e in problem["errors"]]
    rows = await db_rows(migrated, "SELECT id FROM api_keys WHERE tenant_id = $1", admin.identity.tenant_id)
    assert rows == []


async def test_a_key_cannot_hold_more_than_its_creator(users_client, signer):
    admin = await tenant_admin(users_client, signer)
    member = await member_of(admin)
    refused = await member.create("too much", ["orders:read", "users:write", "products:write"])
    assert refused.status_code == 403
    problem = refused.json()
    assert problem["error_code"] == "SCOPE_NOT_HELD"
    assert problem["missing_scopes"] == ["products:write", "users:write"]
    assert (await member.create("fine", ["orders:write", "products:read"])).status_code == 201
    # The token's scopes count too: a token narrower than its role cannot mint a wider key.
    narrow = Caller(users_client, signer, dataclasses.replace(admin.identity, scopes=frozenset({"orders:read"})))
    assert (await narrow.create("wider", ["orders:write"])).status_code == 403


async def test_a_key_cannot_manage_keys(users_client, signer):
    admin = await tenant_admin(users_client, signer)
    key = await admin.created("k", sorted(ALL_SCOPES))
    as_key = Caller(
        users_client,
        signer,
        Identity(subject=key_subject(key["id"]), tenant_id=admin.identity.tenant_id, scopes=ALL_SCOPES, plan="pro"),
    )
    for response in (
        await as_key.create("child", ["orders:read"]),
        await users_client.get("/api-keys", headers=as_key.headers),
        await users_client.delete(f"/api-keys/{key['id']}", headers=as_key.headers),
        await users_client.post(f"/api-keys/{key['id']}/rotate", headers=as_key.headers),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["error_code"] == "USER_REQUIRED"


async def test_listing_pages_newest_first_and_never_shows_a_key(users_client, signer):
    admin = await tenant_admin(users_client, signer)
    member = await member_of(admin)
    created = [await admin.created(f"admin-{i}") for i in range(5)]
    mine = await member.created("member-key")

    seen: list[dict] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await users_client.get("/api-keys", params=params, headers=admin.headers)
        assert page.status_code == 200, page.text
        body = page.json()
        seen += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    # An admin sees every key of the tenant, newest first.
    assert [k["id"] for k in seen] == [mine["id"], *[k["id"] for k in reversed(created)]]
    for item in seen:
        assert "api_key" not in item
        assert len(item["hint"]) == 4
    text = str(seen)
    assert all(k["api_key"] not in text for k in [*created, mine])

    # A member sees only their own keys.
    own = await users_client.get("/api-keys", headers=member.headers)
    assert [k["id"] for k in own.json()["items"]] == [mine["id"]]

    bad = await users_client.get("/api-keys", params={"cursor": "not-a-cursor"}, headers=admin.headers)
    assert bad.status_code == 422
    assert bad.json()["error_code"] == "INVALID_CURSOR"


async def test_resolve_answers_the_identity_and_notes_the_use(users_client, signer, migrated):
    admin = await tenant_admin(users_client, signer)
    # A plan given since sign-up is the one a key resolves to: read afresh, not remembered.
    await grant_plan(migrated, admin.identity.tenant_id, "enterprise")
    key = await admin.created("svc", ["orders:read", "orders:write"])
    before = await db_rows(migrated, "SELECT last_used_at FROM api_keys WHERE id = $1", key["id"])
    assert before[0]["last_used_at"] is None

    response = await resolve(users_client, signer, key["api_key"])
    assert response.status_code == 200, response.text
    assert response.json() == {
        "id": key["id"],
        "tenant_id": admin.identity.tenant_id,
        "plan": "enterprise",
        "scopes": ["orders:read", "orders:write"],
        "created_by": admin.identity.subject,
        "expires_at": None,
        # The tenant's own monthly quota: none given, the plan's applies.
        "monthly_quota": None,
    }
    after = await db_rows(migrated, "SELECT last_used_at FROM api_keys WHERE id = $1", key["id"])
    assert after[0]["last_used_at"] is not None

    unknown = await resolve(users_client, signer, "sk_" + "A" * 43)
    assert unknown.status_code == 404
    assert unknown.json()["error_code"] == "API_KEY_NOT_FOUND"
    for bad in ("", "xyz", "G" * 64, hash_api_key("x").upper()):
        malformed = await users_client.post(
            "/api-keys/resolve", json={"key_hash": bad}, headers=internal_headers(signer, "users", ANONYMOUS)
        )
        assert malformed.status_code == 422, bad
    around = await users_client.post("/api-keys/resolve", json={"key_hash": hash_api_key(key["api_key"])})
    assert around.status_code == 401


async def test_revoking_stops_resolution_and_is_idempotent(users_client, signer, migrated):
    admin = await tenant_admin(users_client, signer)
    key = await admin.created()
    assert (await resolve(users_client, signer, key["api_key"])).status_code == 200
    first = await users_client.delete(f"/api-keys/{key['id']}", headers=admin.headers)
    assert first.status_code == 204
    again = await users_client.delete(f"/api-keys/{key['id']}", headers=admin.headers)
    assert again.status_code == 204
    assert (await resolve(users_client, signer, key["api_key"])).status_code == 404
    rows = await db_rows(migrated, "SELECT revoked_at FROM api_keys WHERE id = $1", key["id"])
    assert rows[0]["revoked_at"] is not None
    listed = await users_client.get("/api-keys", headers=admin.headers)
    assert listed.json()["items"][0]["revoked_at"] is not None


async def test_keys_of_others_answer_as_missing_ones(users_client, signer):
    admin = await tenant_admin(users_client, signer)
    member = await member_of(admin)
    other_admin = await tenant_admin(users_client, signer)
    admins_key = await admin.created()
    members_key = await member.created()
    for caller, key_id in (
        (other_admin, admins_key["id"]),  # another tenant
        (member, admins_key["id"]),  # a colleague's key, for a member
        (admin, str(uuid.uuid4())),  # no such key
    ):
        for response in (
            await users_client.delete(f"/api-keys/{key_id}", headers=caller.headers),
            await users_client.post(f"/api-keys/{key_id}/rotate", headers=caller.headers),
        ):
            assert response.status_code == 404, response.text
            assert response.json()["error_code"] == "API_KEY_NOT_FOUND"
    assert (await resolve(users_client, signer, admins_key["api_key"])).status_code == 200
    # An admin manages every key of the tenant.
    assert (await users_client.delete(f"/api-keys/{members_key['id']}", headers=admin.headers)).status_code == 204


async def test_rotation_issues_a_new_key_and_keeps_the_old_one_for_the_grace_period(users_client, signer):
    admin = await tenant_admin(users_client, signer)
    old = await admin.created("rotating", ["orders:read", "products:read"])
    response = await users_client.post(
        f"/api-keys/{old['id']}/rotate", json={"grace_seconds": 3600}, headers=admin.headers
    )
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    new = response.json()
    assert new["id"] != old["id"]
    assert new["api_key"] != old["api_key"]
    assert API_KEY_RE.match(new["api_key"])
    assert new["scopes"] == old["scopes"]
    assert new["name"] == "rotating"
    assert new["previous"]["id"] == old["id"]
    assert new["previous"]["replaced_by"] == new["id"]
    assert new["previous"]["expires_at"] is not None

    old_identity = await resolve(users_client, signer, old["api_key"])
    assert old_identity.status_code == 200
    assert old_identity.json()["expires_at"] == new["previous"]["expires_at"]
    assert (await resolve(users_client, signer, new["api_key"])).status_code == 200

    again = await users_client.post(f"/api-keys/{old['id']}/rotate", headers=admin.headers)
    assert again.status_code == 409
    assert again.json()["error_code"] == "API_KEY_NOT_ROTATABLE"


async def test_rotation_without_grace_ends_the_old_key_at_once(users_client, signer):
    admin = await tenant_admin(users_client, signer)
    old = await admin.created()
    response = await users_client.post(
        f"/api-keys/{old['id']}/rotate", json={"grace_seconds": 0}, headers=admin.headers
    )
    assert response.status_code == 201
    assert (await resolve(users_client, signer, old["api_key"])).status_code == 404
    assert (await resolve(users_client, signer, response.json()["api_key"])).status_code == 200


async def test_rotation_uses_the_configured_grace_and_refuses_bad_ones(users_client, signer):
    admin = await tenant_admin(users_client, signer)
    old = await admin.created()
    for body in ({"grace_seconds": -1}, {"grace_seconds": 10**9}, {"grace_seconds": "soon"}, {"other": 1}):
        bad = await users_client.post(f"/api-keys/{old['id']}/rotate", json=body, headers=admin.headers)
        assert bad.status_code == 422, body
    default = await users_client.post(f"/api-keys/{old['id']}/rotate", headers=admin.headers)
    assert default.status_code == 201, default.text
    previous = default.json()["previous"]
    grace = datetime.fromisoformat(previous["expires_at"]) - datetime.fromisoformat(default.json()["created_at"])
    assert abs(grace.total_seconds() - 86400) < 5


async def test_revoked_key_cannot_be_rotated(users_client, signer):
    admin = await tenant_admin(users_client, signer)
    key = await admin.created()
    await users_client.delete(f"/api-keys/{key['id']}", headers=admin.headers)
    response = await users_client.post(f"/api-keys/{key['id']}/rotate", headers=admin.headers)
    assert response.status_code == 409
    assert response.json()["error_code"] == "API_KEY_NOT_ROTATABLE"


async def test_concurrent_rotations_of_one_key_make_one_new_key(users_client, signer, migrated):
    admin = await tenant_admin(users_client, signer)
    key = await admin.created()
    results = await asyncio.gather(
        *(users_client.post(f"/api-keys/{key['id']}/rotate", headers=admin.headers) for _ in range(5))
    )
    assert sorted(r.status_code for r in results) == [201, 409, 409, 409, 409]
    rows = await db_rows(migrated, "SELECT id FROM api_keys WHERE tenant_id = $1", admin.identity.tenant_id)
    assert len(rows) == 2


async def test_me_with_a_key_answers_its_creator(users_client, signer):
    admin = await tenant_admin(users_client, signer)
    member = await member_of(admin)
    key = await member.created("mine", ["orders:read"])
    as_key = Identity(
        subject=key_subject(key["id"]), tenant_id=admin.identity.tenant_id, scopes=frozenset({"orders:read"})
    )
    me = await users_client.get("/users/me", headers=internal_headers(signer, "users", as_key))
    assert me.status_code == 200, me.text
    assert me.json()["id"] == member.identity.subject
    assert me.json()["role"] == "member"
