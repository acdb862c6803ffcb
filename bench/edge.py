"""Cost of each edge stage: requests per second through the gateway with the stages switched on one
by one, in the same run.

    .venv/bin/python -m bench.edge [--seconds 10] [--rounds 3] [--connections 50] [--redis-url URL]

Needs wrk (`apt-get install -y wrk`) and a Redis server (default redis://127.0.0.1:6379/0; its keys
go under a prefix of their own and are removed at the end).

One gateway process (one uvicorn worker) proxies to an upstream that answers at once (`python -m
bench.edge upstream PORT`: a fixed user document, and an identity for any API key hash), so the
numbers are the gateway's own cost, not a service's. Each row starts a gateway with the settings of
that row; rounds go through every row in turn so drift on the machine hits all rows alike. The table
gives the median of the rounds, the ratio to the row's baseline, and the time the stages add per
request (1/rate - 1/baseline rate), and the gateway process's own CPU time per request (user +
system, read with psutil around the measured run): on a shared machine that last column moves far
less than the rates do.

GET rows: `GET /v1/users/me` with a JWT, stages added one at a time. POST rows: `POST /v1/users`
with a new `Idempotency-Key` on every request (each is a first request: claim, forward, store),
against the same request without idempotency. The rate limit's rows include the monthly quota (counted
in the same script); the metering rows count each answer by tenant, route, status class and hour
(`gateway/edge/metering.py`). Quotas are raised so that nothing is refused: the
table measures the cost of counting, not of refusing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import psutil
import uvicorn

from bench.common import bearer, post_script, process, redis_prefix, require_wrk, wrk
from scripts.devstack import free_port
from shared.contract import new_api_key

USER = {
    "id": "0b7f2c1e-8c2a-4a7e-9d0e-2f4b6c8d0a1e",
    "email": "bench@example.com",
    "role": "admin",
    "tenant_id": "5d1c3b2a-7e6f-4a8b-9c0d-1e2f3a4b5c6d",
    "created_at": "2026-01-01T00:00:00Z",
}
RESOLVED = {
    "id": "9a8b7c6d-0000-4000-8000-000000000001",
    "tenant_id": USER["tenant_id"],
    "plan": "enterprise",
    "scopes": ["users:read", "users:write", "orders:read", "orders:write"],
    "created_by": USER["id"],
    "expires_at": None,
}

# Every stage off; rows switch them on. Quotas no benchmark can reach.
ALL_OFF = {
    "GATEWAY_SECURITY_HEADERS_ENABLED": "false",
    "GATEWAY_GZIP_ENABLED": "false",
    "GATEWAY_ETAG_ENABLED": "false",
    "GATEWAY_RATE_LIMIT_ENABLED": "false",
    "GATEWAY_IDEMPOTENCY_ENABLED": "false",
    "GATEWAY_USAGE_ENABLED": "false",
    "GATEWAY_RATE_LIMIT_ENTERPRISE": "1000000000/60s",
    # The routes' own quotas (login, sign-up) lifted too.
    "GATEWAY_RATE_LIMIT_ROUTES": json.dumps(
        dict.fromkeys(["POST /v1/auth/token", "POST /v1/tenants"], "1000000000/60s")
    ),
}
HEADERS_ON = {"GATEWAY_SECURITY_HEADERS_ENABLED": "true"}
GZIP_ON = {"GATEWAY_GZIP_ENABLED": "true"}
ETAG_ON = {"GATEWAY_ETAG_ENABLED": "true"}
LIMIT_ON = {"GATEWAY_RATE_LIMIT_ENABLED": "true"}
IDEMPOTENCY_ON = {"GATEWAY_IDEMPOTENCY_ENABLED": "true"}
USAGE_ON = {"GATEWAY_USAGE_ENABLED": "true"}


def rows(redis_env: Mapping[str, str]) -> list[tuple[str, str, dict[str, str]]]:
    """(name, workload, settings) of every row; the first row of each workload is its baseline."""
    hygiene = {**HEADERS_ON, **GZIP_ON, **ETAG_ON}
    everything = {**hygiene, **LIMIT_ON, **redis_env, **USAGE_ON, **IDEMPOTENCY_ON}
    return [
        ("baseline: JWT auth + proxy", "get", {}),
        ("+ security headers", "get", HEADERS_ON),
        ("+ gzip (answer under 500 B: checked, not compressed)", "get", {**HEADERS_ON, **GZIP_ON}),
        ("+ ETag and Cache-Control", "get", hygiene),
        ("+ rate limit, in-process store", "get", {**hygiene, **LIMIT_ON}),
        ("+ rate limit, Redis (one EVALSHA)", "get", {**hygiene, **LIMIT_ON, **redis_env}),
        ("+ metering, in-process store", "get", {**hygiene, **LIMIT_ON, **USAGE_ON}),
        ("+ metering, Redis (one more EVALSHA, pipelined)", "get", {**hygiene, **LIMIT_ON, **redis_env, **USAGE_ON}),
        ("+ idempotency (a GET passes through)", "get", everything),
        ("all stages, X-API-Key instead of JWT (cached)", "get-key", everything),
        ("baseline: POST, all stages but idempotency", "post", {**hygiene, **LIMIT_ON, **redis_env, **USAGE_ON}),
        ("+ idempotency, Redis (claim + store per request)", "post-key", everything),
    ]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of the gateway process and its workers so far: what a request costs
    the gateway, whatever else the machine runs meanwhile."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in (root, *root.children(recursive=True)):
        times = proc.cpu_times()
        total += times.user + times.system
    return total


async def upstream(scope, receive, send):
    """Answers at once: an identity for any API key hash, the same user for everything else."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = json.dumps(RESOLVED if scope["path"] == "/api-keys/resolve" else USER).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    require_wrk()

    token = {"Authorization": f"Bearer {bearer()}"}
    api_key = {"X-API-Key": new_api_key()}
    user_body = json.dumps({"email": "bench@example.com", "password": "correct-horse-9", "role": "member"})
    upstream_port = free_port()
    with (
        redis_prefix(args.redis_url) as prefix,
        tempfile.TemporaryDirectory() as scratch,
        process(
            "bench.edge",
            "upstream",
            str(upstream_port),
            env={},
            health_url=f"http://127.0.0.1:{upstream_port}/",
        ),
    ):
        redis_env = {"GATEWAY_REDIS_URL": args.redis_url, "GATEWAY_REDIS_KEY_PREFIX": prefix}
        table = rows(redis_env)
        results: dict[str, list[float]] = {name: [] for name, _, _ in table}
        cpu: dict[str, list[float]] = {name: [] for name, _, _ in table}
        for _ in range(args.rounds):
            for name, workload, settings in table:
                port = free_port()
                env = {
                    **ALL_OFF,
                    **settings,
                    "GATEWAY_PORT": str(port),
                    **{f"GATEWAY_{s}_URL": f"http://127.0.0.1:{upstream_port}" for s in ("USERS", "ORDERS")},
                    "GATEWAY_ACCESS_LOG": "false",
                    "GATEWAY_LOG_LEVEL": "WARNING",
                }
                base = f"http://127.0.0.1:{port}"
                script = None
                headers: Mapping[str, str] = api_key if workload == "get-key" else token
                url = f"{base}/v1/users/me"
                if workload.startswith("post"):
                    url = f"{base}/v1/users"
                    post_headers = {**token, "Content-Type": "application/json"}
                    script = post_script(
                        Path(scratch), keyed=workload == "post-key", headers=post_headers, body=user_body
                    )
                    headers = {}
                with process("gateway", "serve", env=env, health_url=f"{base}/health/live") as gateway:
                    wrk(
                        url, seconds=2, connections=args.connections, headers=headers, script=script, threads=2
                    )  # warm-up
                    before = cpu_seconds(gateway.pid)
                    measured = wrk(
                        url,
                        seconds=args.seconds,
                        connections=args.connections,
                        headers=headers,
                        script=script,
                        threads=2,
                    )
                    cpu_us = (cpu_seconds(gateway.pid) - before) / max(1, measured.requests) * 1e6
                rate = measured.requests_per_second
                results[name].append(rate)
                cpu[name].append(cpu_us)
                print(f"{name}: {rate:.0f} req/s, {cpu_us:.0f} CPU µs/request", file=sys.stderr, flush=True)

    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; wrk -t2 -c{args.connections}, "
        f"{args.seconds} s x {args.rounds} rounds; one gateway worker, upstream answering at once\n"
    )
    print("| stage | req/s (median) | rounds | vs baseline | added per request | gateway CPU µs/request (median) |")
    print("|---|---|---|---|---|---|")
    baseline = 0.0
    for name, _, _ in table:
        median = statistics.median(results[name])
        if name.startswith("baseline"):
            baseline = median
        added = (1 / median - 1 / baseline) * 1e6
        runs = ", ".join(f"{v:.0f}" for v in results[name])
        print(
            f"| {name} | {median:.0f} | {runs} | {median / baseline:.2f}x | {added:+.0f} µs "
            f"| {statistics.median(cpu[name]):.0f} |"
        )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "upstream":
        uvicorn.run(upstream, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
    else:
        main()
