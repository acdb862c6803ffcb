"""Tenants on plans sign-up does not offer, made as an operator makes them: sign up on a self-service
plan, then `python -m services.users set-plan` (its code, run in-process on the stack's users database)."""

from __future__ import annotations

from services.users.commands import set_plan
from services.users.settings import DEFAULT_SIGNUP_PLANS, UsersSettings
from shared.contract import Plan
from tests.conftest import settings_kwargs
from tests.infra import Servers


def signup_plan(plan: str) -> str:
    """The plan to sign up with on the way to `plan`."""
    return plan if plan in DEFAULT_SIGNUP_PLANS else DEFAULT_SIGNUP_PLANS[-1]


async def grant_plan(infra: Servers | None, tenant_id: str, plan: Plan) -> None:
    """Puts the tenant on `plan` when sign-up could not; `infra` holds the users database."""
    if plan in DEFAULT_SIGNUP_PLANS:
        return
    assert infra is not None, f"the {plan} plan is given by an operator: pass the servers (`migrated`)"
    await set_plan(UsersSettings(**settings_kwargs(infra, "users")), tenant_id, plan)
