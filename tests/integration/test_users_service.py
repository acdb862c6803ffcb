"""The users service on its own, in-process, on a real PostgreSQL database."""

from __future__ import annotations

import uuid

import httpx
import pytest

from shared.contract import ANONYMOUS, IDENTITY_HEADER, ROLE_SCOPES, Identity
from shared.identity_token import IdentitySigner
from tests.conftest import INTERNAL_SECRET, internal_headers


def unique_email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.com"


async def bootstrap(client: httpx.AsyncClient, signer: IdentitySigner, plan: str = "pro") -> dict:
    response = await client.post(
        "/tenants",
        json={"name": "Acme", "plan": plan, "admin_email": unique_email("admin"), "admin_password": "correct-horse-9"},
        headers=internal_headers(signer, "users", ANONYMOUS),
    )
    assert response.status_code == 201, response.text
    return response.json()


def admin_identity(created: dict) -> Identity:
    return Identity(
        subject=created["user"]["id"],
        tenant_id=created["tenant"]["id"],
        scopes=ROLE_SCOPES["admin"],
        plan=created["tenant"]["plan"],
        role="admin",
    )


async def test_bootstrap_creates_tenant_and_admin(users_client, signer):
    created = await bootstrap(users_client, signer, plan="free")
    assert created["tenant"]["plan"] == "free"
    assert created["user"]["role"] == "admin"
    assert created["user"]["tenant_id"] == created["tenant"]["id"]
    assert "password" not in str(created)


async def test_token_carries_tenant_scopes_and_kid(users_client, signer):
    from jose import jwt

    from tests.conftest import JWT_SECRET

    email = unique_email("login")
    await users_client.post(
        "/tenants",
        json={"name": "T", "plan": "free", "admin_email": email, "admin_password": "correct-horse-9"},
        headers=internal_headers(signer, "users", ANONYMOUS),
    )
    response = await users_client.post(
        "/auth/token",
        data={"username": email.upper(), "password": "correct-horse-9"},
        headers=internal_headers(signer, "users", ANONYMOUS),
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    header = jwt.get_unverified_header(body["access_token"])
    assert header == {"alg": "HS256", "kid": "portico-1", "typ": "JWT"}
    claims = jwt.decode(body["access_token"], JWT_SECRET, algorithms=["HS256"])
    assert set(claims) >= {"sub", "tid", "scope", "exp", "iat", "plan"}
    assert set(claims["scope"].split()) == ROLE_SCOPES["admin"]
    assert claims["exp"] - claims["iat"] == 3600


async def test_wrong_password_and_unknown_email_are_the_same_401(users_client, signer):
    created = await bootstrap(users_client, signer)
    headers = internal_headers(signer, "users", ANONYMOUS)
    wrong = await users_client.post(
        "/auth/token", data={"username": created["user"]["email"], "password": "nope-nope-nope"}, headers=headers
    )
    unknown = await users_client.post(
        "/auth/token", data={"username": unique_email(), "password": "nope-nope-nope"}, headers=headers
    )
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["error_code"] == "INVALID_CREDENTIALS"


async def test_duplicate_email_is_409_and_stores_nothing(users_client, signer):
    created = await bootstrap(users_client, signer)
    email = created["user"]["email"]
    response = await users_client.post(
        "/tenants",
        json={"name": "Other", "plan": "free", "admin_email": email.upper(), "admin_password": "another-pass-1"},
        headers=internal_headers(signer, "users", ANONYMOUS),
    )
    assert response.status_code == 409
    problem = response.json()
    assert problem["error_code"] == "EMAIL_TAKEN"
    assert problem["errors"][0]["field"] == "email"
    # The original password still works: nothing was overwritten.
    token = await users_client.post(
        "/auth/token",
        data={"username": email, "password": "correct-horse-9"},
        headers=internal_headers(signer, "users", ANONYMOUS),
    )
    assert token.status_code == 200


async def test_admin_creates_member_and_member_cannot_create_users(users_client, signer):
    created = await bootstrap(users_client, signer)
    admin = admin_identity(created)
    email = unique_email("member")
    response = await users_client.post(
        "/users",
        json={"email": email, "password": "member-pass-1", "role": "member"},
        headers=internal_headers(signer, "users", admin),
    )
    assert response.status_code == 201, response.text
    member = response.json()
    assert member["tenant_id"] == created["tenant"]["id"]
    assert member["role"] == "member"

    member_identity = Identity(
        subject=member["id"], tenant_id=member["tenant_id"], scopes=ROLE_SCOPES["member"], role="member"
    )
    refused = await users_client.post(
        "/users",
        json={"email": unique_email(), "password": "member-pass-1"},
        headers=internal_headers(signer, "users", member_identity),
    )
    assert refused.status_code == 403
    assert refused.json()["required_scope"] == "users:write"

    me = await users_client.get("/users/me", headers=internal_headers(signer, "users", member_identity))
    assert me.status_code == 200
    assert me.json()["email"] == email


async def test_other_tenants_user_is_404_like_a_missing_one(users_client, signer):
    first = await bootstrap(users_client, signer)
    second = await bootstrap(users_client, signer)
    headers = internal_headers(signer, "users", admin_identity(first))
    other = await users_client.get(f"/users/{second['user']['id']}", headers=headers)
    missing = await users_client.get(f"/users/{uuid.uuid4()}", headers=headers)
    assert other.status_code == missing.status_code == 404
    assert other.json()["error_code"] == missing.json()["error_code"] == "USER_NOT_FOUND"
    own = await users_client.get(f"/users/{first['user']['id']}", headers=headers)
    assert own.status_code == 200


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "MISSING_INTERNAL_IDENTITY"),
        ({IDENTITY_HEADER: "not-a-token"}, "INVALID_INTERNAL_IDENTITY"),
    ],
)
async def test_requests_around_the_gateway_are_refused(users_client, headers, code):
    response = await users_client.get("/users/me", headers=headers)
    assert response.status_code == 401
    assert response.json()["error_code"] == code


async def test_identity_for_another_service_or_signed_with_another_secret_is_refused(users_client, signer):
    created = await bootstrap(users_client, signer)
    identity = admin_identity(created)
    for headers in (
        internal_headers(signer, "orders", identity),
        internal_headers(IdentitySigner("x" * 48, 60), "users", identity),
        internal_headers(IdentitySigner(INTERNAL_SECRET, -120), "users", identity),
    ):
        response = await users_client.get("/users/me", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error_code"] == "INVALID_INTERNAL_IDENTITY"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "A", "plan": "free", "admin_email": "not-an-email", "admin_password": "long-enough"}, "admin_email"),
        ({"name": "A", "plan": "gold", "admin_email": "a@example.com", "admin_password": "long-enough"}, "plan"),
        ({"name": "A", "plan": "free", "admin_email": "a@example.com", "admin_password": "short"}, "admin_password"),
        ({"plan": "free", "admin_email": "a@example.com", "admin_password": "long-enough"}, "name"),
        ({"name": 5, "plan": "free", "admin_email": "a@example.com", "admin_password": "long-enough"}, "name"),
        ({"name": "A\x00B", "plan": "free", "admin_email": "a@example.com", "admin_password": "long-enough"}, "name"),
    ],
)
async def test_invalid_bodies_are_422_naming_the_field(users_client, signer, body, field):
    response = await users_client.post("/tenants", json=body, headers=internal_headers(signer, "users", ANONYMOUS))
    assert response.status_code == 422
    problem = response.json()
    assert problem["error_code"] == "VALIDATION_FAILED"
    assert field in [error["field"] for error in problem["errors"]]


async def test_control_characters_in_the_username_are_422_not_a_database_error(users_client, signer):
    response = await users_client.post(
        "/auth/token",
        data={"username": "a\x00b@example.com", "password": "whatever-1"},
        headers=internal_headers(signer, "users", ANONYMOUS),
    )
    assert response.status_code == 422
    assert "username" in [error["field"] for error in response.json()["errors"]]


async def test_malformed_json_is_400(users_client, signer):
    response = await users_client.post(
        "/tenants",
        content=b'{"name": ',
        headers={"content-type": "application/json", **internal_headers(signer, "users", ANONYMOUS)},
    )
    assert response.status_code == 400
    assert response.json()["error_code"] == "MALFORMED_BODY"


async def _login(client: httpx.AsyncClient, signer: IdentitySigner, username: str, password: str) -> httpx.Response:
    return await client.post(
        "/auth/token",
        data={"username": username, "password": password},
        headers=internal_headers(signer, "users", ANONYMOUS),
    )


async def test_an_email_logs_in_however_it_was_typed_at_sign_up(users_client, signer):
    tag = uuid.uuid4().hex[:8]
    # Decomposed é, upper case, an upper-case IDN domain: how a keyboard or a form may send it.
    typed = f"Jose\u0301-{tag}@B\u00dcCHER.example"
    created = await users_client.post(
        "/tenants",
        json={"name": "Unicode", "admin_email": typed, "admin_password": "correct-horse-9"},
        headers=internal_headers(signer, "users", ANONYMOUS),
    )
    assert created.status_code == 201, created.text
    assert created.json()["user"]["email"] == f"jos\u00e9-{tag}@b\u00fccher.example"
    for username in (
        typed,
        f"jos\u00e9-{tag}@b\u00fccher.example",
        f"JOS\u00c9-{tag}@xn--bcher-kva.example",
        f" jose\u0301-{tag}@b\u00fccher.example ",
    ):
        response = await _login(users_client, signer, username, "correct-horse-9")
        assert response.status_code == 200, (username, response.text)


async def test_lookalike_emails_are_one_account(users_client, signer):
    tag = uuid.uuid4().hex[:8]
    first = await users_client.post(
        "/tenants",
        json={"name": "First", "admin_email": f"office-{tag}@example.com", "admin_password": "correct-horse-9"},
        headers=internal_headers(signer, "users", ANONYMOUS),
    )
    assert first.status_code == 201, first.text
    # A ligature, fullwidth letters: another spelling of the same name, not a second account.
    for lookalike in (f"o\ufb03ce-{tag}@example.com", f"\uff4f\uff46\uff46ice-{tag}@example.com"):
        again = await users_client.post(
            "/tenants",
            json={"name": "Second", "admin_email": lookalike, "admin_password": "another-pass-1"},
            headers=internal_headers(signer, "users", ANONYMOUS),
        )
        assert again.status_code == 409, (lookalike, again.text)
        assert again.json()["error_code"] == "EMAIL_TAKEN"
        assert (await _login(users_client, signer, lookalike, "correct-horse-9")).status_code == 200

    admin = admin_identity(first.json())
    member = await users_client.post(
        "/users",
        json={"email": f"\u212aELVIN-{tag}@Example.com", "password": "member-pass-1"},
        headers=internal_headers(signer, "users", admin),
    )
    assert member.status_code == 201, member.text
    assert member.json()["email"] == f"kelvin-{tag}@example.com"
    assert (await _login(users_client, signer, f"Kelvin-{tag}@example.com", "member-pass-1")).status_code == 200
    taken = await users_client.post(
        "/users",
        json={"email": f"kelvin-{tag}@EXAMPLE.com", "password": "member-pass-1"},
        headers=internal_headers(signer, "users", admin),
    )
    assert taken.status_code == 409
    refused = await users_client.post(
        "/users",
        json={"email": f"x\uff20y-{tag}@example.com", "password": "member-pass-1"},
        headers=internal_headers(signer, "users", admin),
    )
    assert refused.status_code == 422
    assert [error["field"] for error in refused.json()["errors"]] == ["email"]


async def test_a_username_that_is_no_address_is_the_same_401(users_client, signer):
    for username in ("not-an-email", "x\uff20y@example.com", "a" * 300):
        response = await _login(users_client, signer, username, "correct-horse-9")
        assert response.status_code == 401, username
        assert response.json()["error_code"] == "INVALID_CREDENTIALS"


async def test_a_token_request_that_is_no_form_is_415_saying_what_the_route_takes(users_client, signer):
    created = await bootstrap(users_client, signer)
    body = {"username": created["user"]["email"], "password": "correct-horse-9"}
    headers = internal_headers(signer, "users", ANONYMOUS)
    for request in (
        {"json": body},
        {"content": b"username=x&password=y", "headers": {"content-type": "text/plain"}},
        {"content": b"username=x&password=y"},
    ):
        response = await users_client.post(
            "/auth/token", **{**request, "headers": {**headers, **request.get("headers", {})}}
        )
        assert response.status_code == 415, response.text
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["error_code"] == "UNSUPPORTED_MEDIA_TYPE"
        for named in ("application/x-www-form-urlencoded", "username", "password"):
            assert named in problem["detail"]
        # Nothing about the account: the body was not read.
        assert body["username"] not in response.text
    # No body at all is no other format: the fields it lacks are named, as before.
    for empty in (
        await users_client.post("/auth/token", headers=headers),
        await users_client.post("/auth/token", headers={**headers, "content-type": "application/octet-stream"}),
    ):
        assert empty.status_code == 422
        assert {error["field"] for error in empty.json()["errors"]} == {"username", "password"}
    # Both kinds of form are read, with or without a charset.
    for form in (
        {"data": body, "headers": {**headers, "content-type": "application/x-www-form-urlencoded; charset=utf-8"}},
        {"files": {key: (None, value) for key, value in body.items()}, "headers": headers},
    ):
        response = await users_client.post("/auth/token", **form)
        assert response.status_code == 200, response.text
    # Around the gateway, whatever the body: 401 first.
    assert (await users_client.post("/auth/token", json=body)).status_code == 401


async def test_the_token_route_documents_its_form_and_the_415(users_client):
    operation = (await users_client.get("/openapi.json")).json()["paths"]["/auth/token"]["post"]
    assert list(operation["requestBody"]["content"]) == ["application/x-www-form-urlencoded"]
    assert {"200", "401", "415"} <= set(operation["responses"])


async def test_an_email_taken_in_another_tenant_answers_as_one_taken_in_ones_own(users_client, signer):
    mine = await bootstrap(users_client, signer)
    theirs = await bootstrap(users_client, signer)
    headers = internal_headers(signer, "users", admin_identity(mine))

    def shape(response: httpx.Response, email: str) -> dict:
        assert response.status_code == 409, response.text
        problem = {k: v for k, v in response.json().items() if k not in ("request_id", "trace_id")}
        return {**problem, "detail": problem["detail"].replace(email, "<email>")}

    answers = {}
    for whose, created in (("own", mine), ("other", theirs)):
        email = created["user"]["email"]
        response = await users_client.post(
            "/users", json={"email": email.upper(), "password": "member-pass-1"}, headers=headers
        )
        answers[whose] = shape(response, email)
        # Nothing names the tenant that holds the address, nor its user.
        for held_by in (theirs["tenant"]["id"], theirs["user"]["id"]):
            assert held_by not in response.text
    assert answers["own"] == answers["other"]
    assert answers["other"]["error_code"] == "EMAIL_TAKEN"
    assert set(answers["other"]) == {"type", "title", "status", "detail", "error_code", "errors"}
