"""What an operator runs against the users database: `python -m services.users <command> ...`, with
the service's own settings (the same `USERS_*` environment as the running service).

- `set-plan <tenant_id> <plan>`: puts a tenant on a plan. Sign-up offers only the plans
  `USERS_SIGNUP_PLANS` lists; any other plan, and every change later, is given this way. The users
  service reads the plan afresh on each request (credit limits change at once); access tokens carry
  the plan they were issued with until they expire, and the gateway's API-key cache keeps a key's
  plan for up to `GATEWAY_API_KEY_CACHE_TTL_SECONDS`.
- `set-quota <tenant_id> <requests|plan>`: gives a tenant its own monthly request quota (requests per
  calendar month, UTC), or (`plan`) returns it to its plan's (`GATEWAY_QUOTA_*`). It reaches the
  gateway as the plan does: in access tokens issued from then on, and in API-key lookups.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from services.users import service
from services.users.errors import TenantNotFound
from services.users.repository import UserRepository
from services.users.settings import UsersSettings
from shared.cli import Task
from shared.contract import PLANS, Plan
from shared.db import create_engine, create_sessionmaker
from shared.repository import transaction

logger = logging.getLogger("portico.users.commands")

T = TypeVar("T")


async def _in_transaction(settings: UsersSettings, change: Callable[[UserRepository], Awaitable[T]]) -> T:
    """Runs `change` in one transaction, on an engine of its own that is disposed of after."""
    engine = create_engine(settings)
    try:
        async with transaction(create_sessionmaker(engine), UserRepository) as repo:
            return await change(repo)
    finally:
        await engine.dispose()


def _run_change(change: Coroutine[Any, Any, T], done: Callable[[T], str]) -> int:
    """Runs a command's change of a tenant and prints what it did; a tenant that does not exist is
    exit status 1."""
    try:
        previous = asyncio.run(change)
    except TenantNotFound as exc:
        print(exc.detail, file=sys.stderr)
        return 1
    print(done(previous))
    return 0


async def set_plan(settings: UsersSettings, tenant_id: str, plan: Plan) -> str:
    """Puts the tenant on `plan` in one transaction; answers the plan it had (TenantNotFound when
    there is no such tenant)."""
    _, previous = await _in_transaction(settings, lambda repo: service.change_plan(repo, tenant_id, plan))
    # The audit line: who ran it is the deployment's to record (the shell, the job that ran it).
    logger.info("tenant %s moved from the %s plan to the %s plan", tenant_id, previous, plan)
    return previous


def _set_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tenant_id", help="the tenant's id (`tenant.id` in the sign-up answer)")
    parser.add_argument("plan", choices=PLANS)


def _run_set_plan(settings: UsersSettings, args: argparse.Namespace) -> int:
    return _run_change(
        set_plan(settings, args.tenant_id, args.plan),
        lambda previous: f"tenant {args.tenant_id}: plan {previous} -> {args.plan}",
    )


async def set_quota(settings: UsersSettings, tenant_id: str, quota: int | None) -> int | None:
    """Gives the tenant its own monthly quota (None: its plan's) in one transaction; answers the one it
    had (TenantNotFound when there is no such tenant)."""
    _, previous = await _in_transaction(settings, lambda repo: service.change_quota(repo, tenant_id, quota))
    logger.info("tenant %s monthly quota changed from %s to %s", tenant_id, previous, quota)
    return previous


def _quota(value: str) -> int | None:
    if value == "plan":
        return None
    try:
        quota = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a number of requests nor 'plan'") from None
    if quota < 1:
        raise argparse.ArgumentTypeError("a quota allows at least 1 request")
    return quota


def _set_quota_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tenant_id", help="the tenant's id (`tenant.id` in the sign-up answer)")
    parser.add_argument("quota", type=_quota, help="requests per calendar month (UTC), or `plan` for the plan's")


def _run_set_quota(settings: UsersSettings, args: argparse.Namespace) -> int:
    return _run_change(
        set_quota(settings, args.tenant_id, args.quota),
        lambda previous: f"tenant {args.tenant_id}: monthly quota {previous or 'plan'} -> {args.quota or 'plan'}",
    )


TASKS: dict[str, Task[UsersSettings]] = {
    "set-plan": Task(
        help="put a tenant on a plan (new access tokens carry it; existing ones keep theirs until they expire)",
        arguments=_set_plan_arguments,
        run=_run_set_plan,
    ),
    "set-quota": Task(
        help="give a tenant its own monthly request quota, or `plan` for its plan's (carried like the plan)",
        arguments=_set_quota_arguments,
        run=_run_set_quota,
    ),
}
