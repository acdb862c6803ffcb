"""No caller can create or grant more authority than it holds, as a property: every route that creates
a principal or a credential, called by every kind of caller (an admin's token, a member's token, API
keys with many scope sets), on the users service and real PostgreSQL.

For each (caller, grant) the test's own model says whether the grant is within what the caller holds;
the service must then answer 201 exactly when it is, and what was created must hold exactly what was
asked (a created user logs in with the role's scopes; a created or rotated key resolves to its
scopes). A refusal creates nothing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import httpx
import pytest
from jose import jwt

from services.users.authority import MANAGE_OWN_KEYS, MANAGE_TENANT_KEYS, SET_CREDIT_LIMITS
from shared.contract import ALL_SCOPES, ANONYMOUS, ROLE_SCOPES, Identity, key_id_of, key_subject
from shared.identity_token import IdentitySigner
from tests.conftest import internal_headers
from tests.integration.test_api_keys import PASSWORD, Caller, db_rows, member_of, resolve, tenant_admin, unique_email

MEMBER = ROLE_SCOPES["member"]
# What each kind of caller holds, as the rule states it (the test's model, not the service's code).
ROLE_HOLDS = {
    "admin": ALL_SCOPES | {MANAGE_OWN_KEYS, MANAGE_TENANT_KEYS, SET_CREDIT_LIMITS},
    "member": MEMBER | {MANAGE_OWN_KEYS},
}
# The scope sets of the keys that call: each scope alone, and the sets people actually give keys.
KEY_SCOPE_SETS: list[frozenset[str]] = [
    *(frozenset({scope}) for scope in sorted(ALL_SCOPES)),
    frozenset({"users:read", "users:write"}),
    frozenset(MEMBER),
    frozenset(ALL_SCOPES),
]
# The scope sets asked for new keys.
ASKED_SCOPE_SETS: list[frozenset[str]] = [
    frozenset({"orders:read"}),
    frozenset({"users:write"}),
    frozenset({"products:write", "orders:write"}),
    frozenset(MEMBER),
    frozenset(ALL_SCOPES),
]


@dataclass
class Actor:
    name: str
    caller: Caller
    holds: frozenset[str]
    # The user a key belongs to (its creator), or the user itself.
    user_id: str


@dataclass
class Tenant:
    admin: Caller
    member: Caller


async def key_actor(owner: Caller, scopes: frozenset[str], signer: IdentitySigner) -> Actor:
    """A key of `owner` with `scopes`, as the gateway would present it: its identity is what the
    users service resolves its hash to."""
    created = await owner.created("caller", sorted(scopes))
    resolved = await resolve(owner.client, signer, created["api_key"])
    assert resolved.status_code == 200, resolved.text
    body = resolved.json()
    identity = Identity(
        subject=key_subject(body["id"]),
        tenant_id=body["tenant_id"],
        scopes=frozenset(body["scopes"]),
        plan=body["plan"],
    )
    return Actor(
        f"key{sorted(scopes)}", Caller(owner.client, signer, identity), frozenset(body["scopes"]), body["created_by"]
    )


async def actors(tenant: Tenant, signer: IdentitySigner) -> list[Actor]:
    found = [
        Actor("admin token", tenant.admin, frozenset(ROLE_HOLDS["admin"]), tenant.admin.identity.subject),
        Actor("member token", tenant.member, frozenset(ROLE_HOLDS["member"]), tenant.member.identity.subject),
    ]
    for scopes in KEY_SCOPE_SETS:
        found.append(await key_actor(tenant.admin, scopes, signer))
    # A member's key holds at most the member's scopes.
    found.append(await key_actor(tenant.member, MEMBER, signer))
    return found


async def login_scopes(client: httpx.AsyncClient, signer: IdentitySigner, email: str) -> frozenset[str] | None:
    response = await client.post(
        "/auth/token",
        data={"username": email, "password": PASSWORD},
        headers=internal_headers(signer, "users", ANONYMOUS),
    )
    if response.status_code != 200:
        return None
    return frozenset(jwt.get_unverified_claims(response.json()["access_token"])["scope"].split())


def refused(response: httpx.Response) -> bool:
    # 403 (authority or scope missing, or a key managing keys), or 404 (another user's key, which a
    # member may not even see).
    return response.status_code in (403, 404) and response.headers["content-type"] == "application/problem+json"


@pytest.fixture
async def tenant(users_client, signer) -> Tenant:
    admin = await tenant_admin(users_client, signer)
    return Tenant(admin, await member_of(admin))


async def test_creating_users_grants_no_more_than_the_caller_holds(users_client, signer, tenant, migrated):
    granted_roles = {role: frozenset(ROLE_HOLDS[role]) for role in ("admin", "member")}
    for actor, (role, grant) in itertools.product(await actors(tenant, signer), granted_roles.items()):
        allowed = "users:write" in actor.holds and grant <= actor.holds
        email = unique_email(role)
        response = await users_client.post(
            "/users", json={"email": email, "password": PASSWORD, "role": role}, headers=actor.caller.headers
        )
        case = f"{actor.name} creating a {role}: {response.status_code} {response.text}"
        if allowed:
            assert response.status_code == 201, case
            assert response.json()["role"] == role, case
            assert await login_scopes(users_client, signer, email) == ROLE_SCOPES[role], case
        else:
            assert refused(response), case
            assert await db_rows(migrated, "SELECT id FROM users WHERE email = $1", email) == [], case
            assert await login_scopes(users_client, signer, email) is None, case
    # The reported case: a key holding only users:write creates neither an admin nor a member.
    only_write = await key_actor(tenant.admin, frozenset({"users:write"}), signer)
    for role in ("admin", "member"):
        response = await users_client.post(
            "/users",
            json={"email": unique_email(), "password": PASSWORD, "role": role},
            headers=only_write.caller.headers,
        )
        assert response.status_code == 403, response.text
        assert response.json()["error_code"] == "SCOPE_NOT_HELD"
        assert MANAGE_OWN_KEYS in response.json()["missing_scopes"]


async def test_creating_keys_grants_no_more_than_the_caller_holds(users_client, signer, tenant, migrated):
    for actor, asked in itertools.product(await actors(tenant, signer), ASKED_SCOPE_SETS):
        allowed = MANAGE_OWN_KEYS in actor.holds and asked <= actor.holds
        before = len(
            await db_rows(migrated, "SELECT id FROM api_keys WHERE tenant_id = $1", tenant.admin.identity.tenant_id)
        )
        response = await actor.caller.create("granted", sorted(asked))
        case = f"{actor.name} creating a key with {sorted(asked)}: {response.status_code} {response.text}"
        if allowed:
            assert response.status_code == 201, case
            resolved = await resolve(users_client, signer, response.json()["api_key"])
            assert frozenset(resolved.json()["scopes"]) == asked, case
            assert resolved.json()["created_by"] == actor.user_id, case
        else:
            assert refused(response), case
            after = await db_rows(
                migrated, "SELECT id FROM api_keys WHERE tenant_id = $1", tenant.admin.identity.tenant_id
            )
            assert len(after) == before, case


async def test_rotating_keys_grants_no_more_than_the_caller_holds(users_client, signer, tenant):
    callers = await actors(tenant, signer)
    owners = {"admin": (tenant.admin, ALL_SCOPES), "member": (tenant.member, MEMBER)}
    for actor, (owner_role, (owner, scopes)) in itertools.product(callers, owners.items()):
        target = await owner.created("target", sorted(scopes))
        own = owner.identity.subject == actor.caller.identity.subject
        may_manage = (own and MANAGE_OWN_KEYS in actor.holds) or MANAGE_TENANT_KEYS in actor.holds
        allowed = may_manage and frozenset(scopes) <= actor.holds
        response = await users_client.post(f"/api-keys/{target['id']}/rotate", headers=actor.caller.headers)
        case = f"{actor.name} rotating the {owner_role}'s key: {response.status_code} {response.text}"
        if allowed:
            assert response.status_code == 201, case
            resolved = await resolve(users_client, signer, response.json()["api_key"])
            assert frozenset(resolved.json()["scopes"]) == scopes, case
        else:
            assert refused(response), case
            still = await resolve(users_client, signer, target["api_key"])
            assert still.json()["expires_at"] is None, case


async def test_a_demoted_creator_cannot_rotate_its_old_keys_into_more_than_it_holds(users_client, signer, migrated):
    """What a key or a token holds is read afresh: a user demoted to member keeps only a member's
    authority, whatever the token or an older key says."""
    admin = await tenant_admin(users_client, signer)
    second = await users_client.post(
        "/users", json={"email": unique_email(), "password": PASSWORD, "role": "admin"}, headers=admin.headers
    )
    assert second.status_code == 201
    second_admin = Caller(
        users_client,
        signer,
        Identity(
            subject=second.json()["id"],
            tenant_id=admin.identity.tenant_id,
            scopes=ALL_SCOPES,
            plan=admin.identity.plan,
            role="admin",
        ),
    )
    key = await second_admin.created("wide", sorted(ALL_SCOPES))
    await db_rows(migrated, "UPDATE users SET role = 'member' WHERE id = $1", second.json()["id"])
    # The old admin token still says admin; the database says member.
    for attempt in (
        await users_client.post(
            "/users",
            json={"email": unique_email(), "password": PASSWORD, "role": "member"},
            headers=second_admin.headers,
        ),
        await second_admin.create("wide again", sorted(ALL_SCOPES)),
        await users_client.post(f"/api-keys/{key['id']}/rotate", headers=second_admin.headers),
    ):
        assert attempt.status_code == 403, attempt.text
        assert attempt.json()["error_code"] in ("SCOPE_NOT_HELD", "INSUFFICIENT_SCOPE")


async def test_through_the_gateway_a_users_write_key_creates_no_admin_and_no_member(stack):
    """The reported escalation, end to end: a key holding only `users:write` is refused both roles,
    and nobody it tried to create can log in."""
    from tests.edge_support import gateway_settings, in_process_gateway, signup

    async with in_process_gateway(gateway_settings(stack)) as gateway:
        tenant = await signup(gateway)
        created = await gateway.post(
            "/v1/api-keys", json={"name": "writer", "scopes": ["users:write"]}, headers=tenant.auth
        )
        assert created.status_code == 201, created.text
        key = {"X-API-Key": created.json()["api_key"]}
        for role in ("admin", "member"):
            email = unique_email(role)
            refused = await gateway.post(
                "/v1/users", json={"email": email, "password": PASSWORD, "role": role}, headers=key
            )
            assert refused.status_code == 403, refused.text
            assert refused.json()["error_code"] == "SCOPE_NOT_HELD"
            login = await gateway.post("/v1/auth/token", data={"username": email, "password": PASSWORD})
            assert login.status_code == 401
        # The admin's own token still creates both.
        for role in ("admin", "member"):
            made = await gateway.post(
                "/v1/users", json={"email": unique_email(role), "password": PASSWORD, "role": role}, headers=tenant.auth
            )
            assert made.status_code == 201, made.text


async def test_no_key_of_any_scope_set_creates_a_user(users_client, signer, tenant, migrated):
    """Every one of the 511 non-empty scope sets a key can hold: none creates an admin or a member (a
    user would manage keys, which no key does), and the tenant's users stay as they were."""
    tenant_id = tenant.admin.identity.tenant_id
    before = await db_rows(migrated, "SELECT id FROM users WHERE tenant_id = $1", tenant_id)
    scopes = sorted(ALL_SCOPES)
    subsets = [frozenset(combo) for size in range(1, len(scopes) + 1) for combo in itertools.combinations(scopes, size)]
    assert len(subsets) == 511
    for subset in subsets:
        actor = await key_actor(tenant.admin, subset, signer)
        for role in ("admin", "member"):
            response = await users_client.post(
                "/users",
                json={"email": unique_email(role), "password": PASSWORD, "role": role},
                headers=actor.caller.headers,
            )
            assert response.status_code == 403, f"{sorted(subset)} creating a {role}: {response.text}"
    after = await db_rows(migrated, "SELECT id FROM users WHERE tenant_id = $1", tenant_id)
    assert len(after) == len(before)


async def credit_limit_in_db(infra, user_id: str) -> int | None:
    rows = await db_rows(infra, "SELECT credit_limit_cents FROM users WHERE id = $1", user_id)
    return rows[0]["credit_limit_cents"]


async def test_only_an_admin_token_sets_a_credit_limit(users_client, signer, tenant, migrated):
    """Setting a credit limit is an admin's: a member's token, and every key (even one holding
    `users:write` or every scope), is refused and changes nothing."""
    target = tenant.member.identity.subject
    for limit, actor in enumerate(await actors(tenant, signer), start=1000):
        allowed = actor.name == "admin token"
        response = await users_client.patch(
            f"/users/{target}", json={"credit_limit_cents": limit}, headers=actor.caller.headers
        )
        case = f"{actor.name} setting a credit limit: {response.status_code} {response.text}"
        if allowed:
            assert response.status_code == 200, case
            assert response.json()["credit_limit_cents"] == limit, case
            assert response.json()["credit_limit_custom"] is True, case
            assert await credit_limit_in_db(migrated, target) == limit, case
            continue
        assert response.status_code == 403, case
        assert response.headers["content-type"] == "application/problem+json", case
        if key_id_of(actor.caller.identity.subject) is not None and "users:write" in actor.holds:
            assert response.json()["error_code"] == "USER_REQUIRED", case
        assert await credit_limit_in_db(migrated, target) != limit, case
    # The reported case: a key holding only users:write.
    only_write = await key_actor(tenant.admin, frozenset({"users:write"}), signer)
    response = await users_client.patch(
        f"/users/{target}", json={"credit_limit_cents": 10**12}, headers=only_write.caller.headers
    )
    assert response.status_code == 403, response.text
    assert response.json()["error_code"] == "USER_REQUIRED"
    assert await credit_limit_in_db(migrated, target) != 10**12


async def second_admin(users_client, signer, admin: Caller) -> Caller:
    """Another admin of `admin`'s tenant, calling with the token it gets as an admin (which it keeps,
    valid, once a test demotes it)."""
    second = await users_client.post(
        "/users", json={"email": unique_email(), "password": PASSWORD, "role": "admin"}, headers=admin.headers
    )
    assert second.status_code == 201, second.text
    identity = Identity(
        subject=second.json()["id"],
        tenant_id=admin.identity.tenant_id,
        scopes=ALL_SCOPES,
        plan=admin.identity.plan,
        role="admin",
    )
    return Caller(users_client, signer, identity)


async def test_a_demoted_admin_token_sets_no_credit_limit(users_client, signer, migrated):
    """The role is read afresh: a token issued while its user was an admin, still carrying
    `users:write`, is refused once the user is a member."""
    admin = await tenant_admin(users_client, signer)
    old_token = await second_admin(users_client, signer, admin)
    second_id = old_token.identity.subject
    # While an admin, the token sets its own limit; once demoted, nothing.
    allowed = await users_client.patch(
        f"/users/{second_id}", json={"credit_limit_cents": 5000}, headers=old_token.headers
    )
    assert allowed.status_code == 200, allowed.text
    await db_rows(migrated, "UPDATE users SET role = 'member' WHERE id = $1", second_id)
    for target in (second_id, admin.identity.subject):
        refused_patch = await users_client.patch(
            f"/users/{target}", json={"credit_limit_cents": 10**12}, headers=old_token.headers
        )
        assert refused_patch.status_code == 403, refused_patch.text
        assert refused_patch.json()["error_code"] in ("SCOPE_NOT_HELD", "INSUFFICIENT_SCOPE")
    assert await credit_limit_in_db(migrated, second_id) == 5000
    assert await credit_limit_in_db(migrated, admin.identity.subject) is None


async def test_a_demoted_admin_token_manages_only_its_own_keys(users_client, signer, migrated):
    """Whose keys a user manages is read afresh too: a token issued while its user was an admin lists,
    rotates and revokes only the user's own keys once it is a member; another's answer 404 as a
    missing key does, and stay as they were."""
    admin = await tenant_admin(users_client, signer)
    old_token = await second_admin(users_client, signer, admin)
    second_id = old_token.identity.subject
    others = await admin.created("the first admin's")
    own = await old_token.created("its own")
    listed = await users_client.get("/api-keys", headers=old_token.headers)
    assert {key["id"] for key in listed.json()["items"]} >= {others["id"], own["id"]}

    await db_rows(migrated, "UPDATE users SET role = 'member' WHERE id = $1", second_id)
    listed = await users_client.get("/api-keys", headers=old_token.headers)
    assert [key["id"] for key in listed.json()["items"]] == [own["id"]]
    for method, path in [("POST", f"/api-keys/{others['id']}/rotate"), ("DELETE", f"/api-keys/{others['id']}")]:
        refused = await users_client.request(method, path, headers=old_token.headers)
        assert refused.status_code == 404, refused.text
        assert refused.json()["error_code"] == "API_KEY_NOT_FOUND"
    assert (await resolve(users_client, signer, others["api_key"])).status_code == 200
    assert (await users_client.delete(f"/api-keys/{own['id']}", headers=old_token.headers)).status_code == 204
