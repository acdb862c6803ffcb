"""Helpers shared by the inventory and orders tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import httpx

from shared.contract import ANONYMOUS, ROLE_SCOPES, Identity
from shared.identity_token import IdentitySigner
from tests.conftest import internal_headers
from tests.infra import Servers

PASSWORD = "correct-horse-9"
# The test server is shared by every process of the stack and by other test sessions; small pools
# keep the in-process apps of these tests well inside its connection limit.
# In-process apps have no caller with a timeout of its own: their requests may wait long for a
# connection on a loaded machine, so the concurrency tests count exact outcomes.
SMALL_POOL = {"db_pool_size": 4, "db_max_overflow": 4, "db_pool_timeout_seconds": 30}


def unique(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Caller:
    """One identity calling one in-process service, as the gateway (or another service) would."""

    client: httpx.AsyncClient
    signer: IdentitySigner
    audience: str
    identity: Identity

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**internal_headers(self.signer, self.audience, self.identity), **(extra or {})}

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any):
        return self.client.request(method, path, headers=self.headers(headers), **kwargs)

    def get(self, path: str, **kwargs: Any):
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any):
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any):
        return self.request("PATCH", path, **kwargs)

    def as_(self, identity: Identity) -> Caller:
        return replace(self, identity=identity)

    def to(self, client: httpx.AsyncClient, audience: str) -> Caller:
        return replace(self, client=client, audience=audience)


def tenant_identity(tenant_id: str | None = None, subject: str | None = None, role: str = "admin") -> Identity:
    return Identity(
        subject=subject or str(uuid.uuid4()),
        tenant_id=tenant_id or str(uuid.uuid4()),
        scopes=ROLE_SCOPES[role],
        plan="pro",
        role=role,
    )


async def bootstrap_tenant(users: httpx.AsyncClient, signer: IdentitySigner, plan: str = "pro") -> Identity:
    """A real tenant and admin in the users service; answers the admin's identity."""
    response = await users.post(
        "/tenants",
        json={
            "name": "Acme",
            "plan": plan,
            "admin_email": f"{unique('admin')}@example.com",
            "admin_password": PASSWORD,
        },
        headers=internal_headers(signer, "users", ANONYMOUS),
    )
    assert response.status_code == 201, response.text
    created = response.json()
    return Identity(
        subject=created["user"]["id"],
        tenant_id=created["tenant"]["id"],
        scopes=ROLE_SCOPES["admin"],
        plan=plan,
        role="admin",
    )


def assert_problem(response: httpx.Response, status: int, code: str | None = None, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail", "error_code", "request_id"} <= set(body)
    assert body["status"] == status
    if code is not None:
        assert body["error_code"] == code, body
    if field is not None:
        assert field in [error["field"] for error in body.get("errors") or []], body
    return body


async def db_fetch(infra: Servers, service: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """Reads a service's test database directly, to check what no route shows (reservations held,
    attempts left behind)."""
    conn = await asyncpg.connect(infra.database_dsn(service))
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()
