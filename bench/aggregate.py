"""The dashboard aggregate: latency against its slowest part, the budget with a hung part, and its
throughput beside a plain proxied GET, in one run.

    .venv/bin/python -m bench.aggregate [--seconds 10] [--connections 50] [--samples 200]

Three stand-in services answer the dashboard's parts after 100 ms (users), 150 ms (orders) and 80 ms
(inventory). Fetched at once, the dashboard should take the slowest part plus at most 2 ms (p50 <=
152 ms); one after the other it would take 330 ms. The slowest part's stand-in is also called
directly from the same client, and the difference is what the gateway adds. Then the inventory
stand-in is stopped (SIGSTOP): the dashboard should answer within the budget
(GATEWAY_AGGREGATE_TIMEOUT_SECONDS, 1 s here) plus at most 5 ms. Circuit breakers are off for these
measurements, so every request waits for the hung part rather than skipping it once its circuit
opens. Last, with stand-ins that answer at once: the dashboard's p50 over sequential requests (the
gateway's own time), and wrk's requests per second for the dashboard and `GET /v1/users/me` at
`--connections` connections against the same gateway (one worker, rate limits off).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import time
from collections.abc import Iterator

import httpx

from bench.common import bearer, process, wrk
from scripts.devstack import free_port

PART_DELAYS_MS = {"users": 100.0, "orders": 150.0, "inventory": 80.0}
BUDGET_SECONDS = 1.0


@contextlib.contextmanager
def stand_ins(delays: dict[str, float]) -> Iterator[dict[str, tuple[int, int]]]:
    """One stand-in process per service; answers name -> (port, pid)."""
    with contextlib.ExitStack() as stack:
        started = {}
        for name, delay in delays.items():
            port = free_port()
            proc = stack.enter_context(
                process(
                    "bench.parts_upstream",
                    str(port),
                    str(delay),
                    env={},
                    health_url=f"http://127.0.0.1:{port}/health/live",
                )
            )
            started[name] = (port, proc.pid)
        yield started


@contextlib.contextmanager
def gateway(services: dict[str, tuple[int, int]], **extra: str) -> Iterator[str]:
    port = free_port()
    env = {
        "GATEWAY_PORT": str(port),
        "GATEWAY_ACCESS_LOG": "false",
        "GATEWAY_LOG_LEVEL": "WARNING",
        "GATEWAY_RATE_LIMIT_ENABLED": "false",
        "GATEWAY_AGGREGATE_TIMEOUT_SECONDS": str(BUDGET_SECONDS),
        **{f"GATEWAY_{name.upper()}_URL": f"http://127.0.0.1:{port_}" for name, (port_, _) in services.items()},
        **extra,
    }
    with process("gateway", "serve", env=env, health_url=f"http://127.0.0.1:{port}/health/live"):
        yield f"http://127.0.0.1:{port}"


def latencies(url: str, headers: dict[str, str], samples: int, seconds: float) -> list[float]:
    """Milliseconds of sequential requests (`samples` of them, or fewer if `seconds` run out)."""
    taken: list[float] = []
    deadline = time.monotonic() + seconds
    with httpx.Client(headers=headers, timeout=10) as client:
        client.get(url)  # warm-up: the pooled connections exist
        while len(taken) < samples and time.monotonic() < deadline:
            started = time.perf_counter()
            response = client.get(url)
            taken.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")
    return taken


def p50(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    token = bearer(scopes="users:read orders:read")
    headers = {"Authorization": f"Bearer {token}"}
    path = "/v1/users/u-1/dashboard"

    slowest_name = max(PART_DELAYS_MS, key=PART_DELAYS_MS.__getitem__)
    with stand_ins(PART_DELAYS_MS) as services, gateway(services, GATEWAY_CIRCUIT_ENABLED="false") as base:
        # The slowest part as this client sees it when called directly: its delay plus the stand-in's
        # and the client's own time, which the dashboard pays too.
        direct = latencies(f"http://127.0.0.1:{services[slowest_name][0]}/orders", {}, args.samples, args.seconds)
        concurrent = latencies(base + path, headers, args.samples, args.seconds)
        inventory_pid = services["inventory"][1]
        os.kill(inventory_pid, signal.SIGSTOP)
        try:
            hung = latencies(base + path, headers, max(5, args.samples // 20), args.seconds)
        finally:
            os.kill(inventory_pid, signal.SIGCONT)

    with stand_ins(dict.fromkeys(PART_DELAYS_MS, 0.0)) as services, gateway(services) as base:
        instant = latencies(base + path, headers, args.samples, args.seconds)
        wrk(base + path, headers=headers, seconds=2, connections=args.connections)  # warm-up
        dashboard = wrk(base + path, headers=headers, seconds=args.seconds, connections=args.connections)
        proxied = wrk(base + "/v1/users/me", headers=headers, seconds=args.seconds, connections=args.connections)

    slowest = max(PART_DELAYS_MS.values())
    print(f"\nparts answer after {', '.join(f'{n} {d:g} ms' for n, d in PART_DELAYS_MS.items())}\n")
    print("| measurement | p50 | target | samples |")
    print("|---|---|---|---|")
    print(f"| {slowest_name} stand-in, called directly | {p50(direct):.1f} ms | | {len(direct)} |")
    print(f"| dashboard, parts at once | {p50(concurrent):.1f} ms | <= {slowest + 2:g} ms | {len(concurrent)} |")
    print(f"| dashboard over the slowest part called directly | {p50(concurrent) - p50(direct):.1f} ms | <= 2 ms | |")
    print(f"| dashboard, parts answering at once (the gateway's own time) | {p50(instant):.1f} ms | | {len(instant)} |")
    budget_ms = BUDGET_SECONDS * 1000
    print(f"| dashboard, inventory hung | {p50(hung):.1f} ms | <= {budget_ms + 5:g} ms | {len(hung)} |")
    print(f"\ninstant parts, {args.connections} connections, {args.seconds} s, one gateway worker\n")
    print("| route | req/s | p50 | p99 |")
    print("|---|---|---|---|")
    for name, result in (
        ("GET /v1/users/{id}/dashboard (3 parts)", dashboard),
        ("GET /v1/users/me (proxied)", proxied),
    ):
        print(f"| {name} | {result.requests_per_second:.0f} | {result.p50_ms:.1f} ms | {result.p99_ms:.1f} ms |")


if __name__ == "__main__":
    main()
