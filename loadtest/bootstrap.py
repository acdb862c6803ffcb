"""Tenants for a load test, made through the public API before the load starts: on every plan, each
with an admin, members, products with plenty of stock, and an API key.

A plan the deployment does not offer at sign-up (enterprise, by default) is given as an operator gives
it: the tenant signs up on pro, then `python -m services.users set-plan` runs here, with this
environment's `USERS_*` settings, which reach the database of `make run`'s stack on this machine. For
another deployment, list the plan in its `USERS_SIGNUP_PLANS` or run this with its users settings."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

PLANS = ("free", "pro", "enterprise")
# What sign-up offers unless a deployment says otherwise (USERS_SIGNUP_PLANS).
SELF_SERVICE_PLANS = ("free", "pro")
ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "load-test-password-9"
API_KEY_SCOPES = ["products:read", "orders:read", "orders:write"]
# Enough that no journey runs a product out of stock within a soak.
STOCK = 10_000_000


@dataclass
class Tenant:
    id: str
    name: str
    plan: str
    admin_email: str
    members: list[str] = field(default_factory=list)
    products: list[str] = field(default_factory=list)
    api_key: str = ""


class BootstrapFailed(RuntimeError):
    pass


def _send(
    client: httpx.Client, method: str, url: str, attempts: int = 8, answers: Collection[int] = (), **kwargs: Any
) -> httpx.Response:
    """One call, retried on 429 (after Retry-After, capped) and on 5xx or no answer, with backoff. An
    error status among `answers` is answered rather than raised."""
    delay = 0.5
    for _ in range(attempts):
        try:
            response = client.request(method, url, **kwargs)
        except httpx.TransportError:
            time.sleep(delay)
            delay = min(delay * 2, 5)
            continue
        if response.status_code == 429 or response.status_code >= 500:
            retry_after = response.headers.get("retry-after", "")
            time.sleep(min(float(retry_after), 10) if retry_after.isdigit() else delay)
            delay = min(delay * 2, 5)
            continue
        if response.is_error and response.status_code not in answers:
            raise BootstrapFailed(f"{method} {url} answered {response.status_code}: {response.text[:300]}")
        return response
    raise BootstrapFailed(f"{method} {url} kept failing after {attempts} attempts")


def token(client: httpx.Client, email: str) -> str:
    response = _send(client, "POST", "/v1/auth/token", data={"username": email, "password": PASSWORD})
    access_token: str = response.json()["access_token"]
    return access_token


def make_tenant(host: str, plan: str, run_id: str, index: int, members: int, products: int) -> Tenant:
    name = f"Load {run_id} {plan} {index}"
    email = f"admin-{run_id}-{plan}-{index}@load.example.com"
    with httpx.Client(base_url=host, timeout=30) as client:
        body = {"name": name, "plan": plan, "admin_email": email, "admin_password": PASSWORD}
        created = _send(client, "POST", "/v1/tenants", json=body, answers=(403,))
        if created.status_code == 403:
            created = _send(client, "POST", "/v1/tenants", json={**body, "plan": SELF_SERVICE_PLANS[-1]})
            grant_plan(created.json()["tenant"]["id"], plan)
        tenant = Tenant(created.json()["tenant"]["id"], name, plan, email)
        client.headers["Authorization"] = f"Bearer {token(client, email)}"
        for m in range(members):
            member = f"member-{run_id}-{plan}-{index}-{m}@load.example.com"
            _send(client, "POST", "/v1/users", json={"email": member, "password": PASSWORD, "role": "member"})
            tenant.members.append(member)
        for p in range(products):
            product = {
                "sku": f"LT-{run_id}-{index}-{p}",
                "name": f"Load test product {p}",
                "price_cents": random.randint(100, 2_000),
                "stock": STOCK,
            }
            tenant.products.append(_send(client, "POST", "/v1/products", json=product).json()["id"])
        key = _send(client, "POST", "/v1/api-keys", json={"name": f"load-{run_id}", "scopes": API_KEY_SCOPES})
        tenant.api_key = key.json()["api_key"]
    return tenant


def grant_plan(tenant_id: str, plan: str) -> None:
    """What an operator runs for a plan sign-up does not offer."""
    command = [sys.executable, "-m", "services.users", "set-plan", tenant_id, plan]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise BootstrapFailed(
            f"the {plan} plan is not offered at sign-up, and `{' '.join(command[1:])}` failed: "
            f"{done.stderr.strip()[-300:]}. List {plan} in the deployment's USERS_SIGNUP_PLANS, or run the "
            "load test with the users service's settings (USERS_DATABASE_URL, ...)."
        )


def bootstrap(
    host: str, tenants_per_plan: int = 2, members: int = 3, products: int = 20, run_id: str | None = None
) -> list[Tenant]:
    """Tenants on every plan, made concurrently (each makes its own calls in order)."""
    run_id = run_id or uuid.uuid4().hex[:8]
    jobs = [(plan, i) for plan in PLANS for i in range(tenants_per_plan)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(make_tenant, host, plan, run_id, i, members, products) for plan, i in jobs]
        return [future.result() for future in futures]


def save(tenants: list[Tenant], path: Path) -> None:
    path.write_text(json.dumps([asdict(t) for t in tenants], indent=2) + "\n")


def load(path: Path) -> list[Tenant]:
    data: list[Mapping[str, Any]] = json.loads(path.read_text())
    return [Tenant(**item) for item in data]
