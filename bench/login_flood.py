"""What a login flood does to another tenant: the latency of its `GET /v1/users/me` alone, then while
`--concurrency` clients log in as fast as they can, through the gateway.

    .venv/bin/python -m bench.login_flood [--concurrency 115] [--seconds 20] [--source DIR]

Starts the users service on a PostgreSQL database of its own (created and dropped here;
TEST_DATABASE_URL, default the local server) with its default pool (10 + 10 overflow), and a gateway
with in-process stores in front of it. The flood logs in with the right password (a wrong one is
refused at the edge after 30 failures a minute, which is not what this measures), and the gateway's
login and anonymous quotas are lifted so the whole flood reaches the users service. Prints, for the
other tenant, p50/p99/max latency and failures alone and under the flood, and the flood's answers by
status.

`--source` runs both processes from another checkout (e.g. an older commit unpacked with
`git archive <commit> | tar -x -C DIR`) with this environment's packages, to compare code.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import sys
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import ROOT, migrated_database, server
from scripts.devstack import free_port

PASSWORD = "bench-password-1"


@dataclass
class Latencies:
    seconds: list[float] = field(default_factory=list)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)

    def line(self, label: str) -> str:
        if not self.seconds:
            return f"{label}: no answers; failures {dict(self.failures)}"
        ordered = sorted(self.seconds)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (
            f"{label}: {len(ordered)} requests, p50 {statistics.median(ordered) * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms, failures {dict(self.failures) or 0}"
        )


async def signup(client: httpx.AsyncClient) -> tuple[str, str]:
    email = f"bench-{uuid.uuid4().hex[:10]}@example.com"
    created = await client.post(
        "/v1/tenants", json={"name": "Bench", "plan": "enterprise", "admin_email": email, "admin_password": PASSWORD}
    )
    created.raise_for_status()
    token = await client.post("/v1/auth/token", data={"username": email, "password": PASSWORD})
    token.raise_for_status()
    return email, token.json()["access_token"]


async def measure(client: httpx.AsyncClient, token: str, until: float) -> Latencies:
    """The other tenant's `/v1/users/me`, one request after another, until `until`."""
    found = Latencies()
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            answer = await client.get("/v1/users/me", headers=headers)
        except httpx.HTTPError as exc:
            found.failures[type(exc).__name__] += 1
            continue
        if answer.status_code == 200:
            found.seconds.append(time.monotonic() - started)
        else:
            found.failures[str(answer.status_code)] += 1
        await asyncio.sleep(0.02)
    return found


async def flood(client: httpx.AsyncClient, email: str, until: float, outcomes: collections.Counter[str]) -> None:
    while time.monotonic() < until:
        try:
            answer = await client.post("/v1/auth/token", data={"username": email, "password": PASSWORD})
            outcomes[str(answer.status_code)] += 1
        except httpx.HTTPError as exc:
            outcomes[type(exc).__name__] += 1


async def run(args: argparse.Namespace) -> None:
    admin = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    admin = admin.replace("postgresql+asyncpg://", "postgresql://", 1)
    async with migrated_database(admin, "users") as url:
        users_port, gateway_port = free_port(), free_port()
        common = {"PYTHONUNBUFFERED": "1"}
        users_env = {
            **common,
            "USERS_PORT": str(users_port),
            "USERS_DATABASE_URL": url,
            "USERS_ACCESS_LOG": "false",
            "USERS_LOG_LEVEL": "WARNING",
            # The bench's own deployment offers enterprise at sign-up (its quota keeps the measured
            # tenant clear of rate limits); the default offers free and pro only.
            "USERS_SIGNUP_PLANS": "free,pro,enterprise",
            # The flood is one account's logins at once, each counted before its password is checked:
            # past the free ones they would be paused (429) rather than hashed, which is not measured here.
            "USERS_LOGIN_FREE_FAILURES": "1000000",
        }
        gateway_env = {
            **common,
            "GATEWAY_PORT": str(gateway_port),
            "GATEWAY_USERS_URL": f"http://127.0.0.1:{users_port}",
            "GATEWAY_REDIS_URL": "",
            "GATEWAY_ACCESS_LOG": "false",
            "GATEWAY_LOG_LEVEL": "WARNING",
            # The whole flood reaches the users service: what is measured is how the service copes.
            "GATEWAY_RATE_LIMIT_ROUTES": json.dumps({"POST /v1/auth/token": "1000000/60s"}),
            "GATEWAY_RATE_LIMIT_ANONYMOUS": "1000000/60s",
        }
        source = args.source.resolve()
        with ExitStack() as stack:
            stack.enter_context(
                server(
                    [sys.executable, "-m", "services.users", "serve"],
                    env=users_env,
                    health_url=f"http://127.0.0.1:{users_port}/health/live",
                    cwd=source,
                )
            )
            stack.enter_context(
                server(
                    [sys.executable, "-m", "gateway", "serve"],
                    env=gateway_env,
                    health_url=f"http://127.0.0.1:{gateway_port}/health/live",
                    cwd=source,
                )
            )
            limits = httpx.Limits(
                max_connections=args.concurrency + 10, max_keepalive_connections=args.concurrency + 10
            )
            base = f"http://127.0.0.1:{gateway_port}"
            async with (
                httpx.AsyncClient(base_url=base, timeout=60) as other,
                httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as flooders,
            ):
                flooded_email, _ = await signup(other)
                _, other_token = await signup(other)
                alone = await measure(other, other_token, time.monotonic() + args.seconds)
                outcomes: collections.Counter[str] = collections.Counter()
                until = time.monotonic() + args.seconds
                during, *_ = await asyncio.gather(
                    measure(other, other_token, until),
                    *(flood(flooders, flooded_email, until, outcomes) for _ in range(args.concurrency)),
                )
    print(f"code: {source}")
    print(alone.line("another tenant's /v1/users/me alone"))
    print(during.line(f"another tenant's /v1/users/me during {args.concurrency} concurrent logins"))
    print(f"the flood's answers: {dict(sorted(outcomes.items()))}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.login_flood", description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=115, help="clients logging in at once")
    parser.add_argument("--seconds", type=float, default=20, help="length of each phase")
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout to run the processes from")
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
