"""Who chooses a tenant's plan: sign-up only among the plans `USERS_SIGNUP_PLANS` lists (free and pro
by default); any other plan is an operator's act, `python -m services.users set-plan`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid

import httpx
import pytest
from jose import jwt
from pydantic import ValidationError

from services.users.app import create_app
from services.users.commands import _run_set_plan, _set_plan_arguments
from services.users.settings import UsersSettings
from shared.contract import ANONYMOUS, ROLE_SCOPES, Identity
from shared.identity_token import IdentitySigner
from tests.conftest import INTERNAL_SECRET, JWT_SECRET, ROOT, app_client, internal_headers, settings_kwargs
from tests.infra import Servers

PASSWORD = "correct-horse-9"


def unique_email() -> str:
    return f"plan-{uuid.uuid4().hex[:12]}@example.com"


async def sign_up(client: httpx.AsyncClient, signer: IdentitySigner, plan: str, email: str) -> httpx.Response:
    return await client.post(
        "/tenants",
        json={"name": "Plans", "plan": plan, "admin_email": email, "admin_password": PASSWORD},
        headers=internal_headers(signer, "users", ANONYMOUS),
    )


async def token_claims(client: httpx.AsyncClient, signer: IdentitySigner, email: str) -> dict:
    response = await client.post(
        "/auth/token",
        data={"username": email, "password": PASSWORD},
        headers=internal_headers(signer, "users", ANONYMOUS),
    )
    assert response.status_code == 200, response.text
    return jwt.decode(response.json()["access_token"], JWT_SECRET, algorithms=["HS256"])


async def test_sign_up_offers_free_and_pro_and_refuses_enterprise_naming_them(users_client, signer):
    for plan in ("free", "pro"):
        created = await sign_up(users_client, signer, plan, unique_email())
        assert created.status_code == 201, created.text
        assert created.json()["tenant"]["plan"] == plan

    email = unique_email()
    refused = await sign_up(users_client, signer, "enterprise", email)
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["error_code"] == "PLAN_NOT_SELF_SERVICE"
    assert problem["allowed_plans"] == ["free", "pro"]
    assert "enterprise" in problem["detail"]
    assert "free or pro" in problem["detail"]
    # Nothing was created: the address is still free to sign up with.
    assert (await sign_up(users_client, signer, "pro", email)).status_code == 201
    # An unknown plan stays a validation error of the field.
    unknown = await sign_up(users_client, signer, "gold", unique_email())
    assert unknown.status_code == 422
    assert [error["field"] for error in unknown.json()["errors"]] == ["plan"]


async def test_a_deployment_may_offer_enterprise_at_sign_up(migrated: Servers, signer):
    settings = UsersSettings(**settings_kwargs(migrated, "users"), signup_plans=["enterprise", "free"])
    async for client in app_client(create_app(settings)):
        created = await sign_up(client, signer, "enterprise", unique_email())
        assert created.status_code == 201, created.text
        refused = await sign_up(client, signer, "pro", unique_email())
        assert refused.status_code == 403
        assert refused.json()["allowed_plans"] == ["free", "enterprise"]


def test_the_setting_reads_a_list_and_refuses_unknown_or_no_plans(monkeypatch):
    kwargs = {"environment": "test", "jwt_secret": JWT_SECRET, "internal_token_secret": INTERNAL_SECRET}
    monkeypatch.setenv("USERS_SIGNUP_PLANS", " pro , enterprise,pro")
    assert UsersSettings(**kwargs).signup_plans == ["pro", "enterprise"]
    for bad in ("pro,gold", ""):
        monkeypatch.setenv("USERS_SIGNUP_PLANS", bad)
        with pytest.raises(ValidationError, match="signup_plans"):
            UsersSettings(**kwargs)


def _operator_env(migrated: Servers) -> dict[str, str]:
    """What the service runs with: the operator's command reads the same settings."""
    return {
        **os.environ,
        "USERS_ENVIRONMENT": "test",
        "USERS_DATABASE_URL": migrated.database_url("users"),
        "USERS_JWT_SECRET": JWT_SECRET,
        "USERS_INTERNAL_TOKEN_SECRET": INTERNAL_SECRET,
        "USERS_LOG_JSON": "false",
    }


async def _run(migrated: Servers, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.users",
        *args,
        cwd=ROOT,
        env=_operator_env(migrated),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_operator_command_moves_a_tenant_to_another_plan(users_client, signer, migrated: Servers):
    email = unique_email()
    created = await sign_up(users_client, signer, "pro", email)
    assert created.status_code == 201, created.text
    tenant_id, user_id = created.json()["tenant"]["id"], created.json()["user"]["id"]
    before = await token_claims(users_client, signer, email)
    assert before["plan"] == "pro"

    code, out, err = await _run(migrated, "set-plan", tenant_id, "enterprise")
    assert code == 0, err
    assert out.strip() == f"tenant {tenant_id}: plan pro -> enterprise"
    assert f"tenant {tenant_id} moved from the pro plan to the enterprise plan" in err

    # New tokens carry the new plan; the service reads it afresh, so the plan's credit limit applies at once.
    assert (await token_claims(users_client, signer, email))["plan"] == "enterprise"
    identity = Identity(subject=user_id, tenant_id=tenant_id, scopes=ROLE_SCOPES["admin"], plan="pro", role="admin")
    me = await users_client.get("/users/me", headers=internal_headers(signer, "users", identity))
    assert me.json()["credit_limit_cents"] == 100_000_000


async def test_the_operator_command_refuses_an_unknown_tenant_or_plan(migrated: Servers, capsys):
    settings = UsersSettings(**settings_kwargs(migrated, "users"))
    missing = str(uuid.uuid4())
    # In-process (each run of the command costs seconds of imports): the command's own functions.
    code = await asyncio.to_thread(_run_set_plan, settings, argparse.Namespace(tenant_id=missing, plan="free"))
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert f"No tenant {missing}." in err
    parser = argparse.ArgumentParser()
    _set_plan_arguments(parser)
    with pytest.raises(SystemExit) as refused:
        parser.parse_args([missing, "gold"])
    assert refused.value.code == 2
    assert "invalid choice: 'gold'" in capsys.readouterr().err
