"""Gateway proxy throughput with each upstream transport, in one run.

    .venv/bin/python -m bench.transport [--seconds 10] [--rounds 3] [--connections 50]

One uvicorn worker of the gateway proxies `GET /v1/users/me` to a static JSON upstream; wrk drives
it. Rounds alternate between transports so drift on the machine hits both alike; the table gives the
median requests per second and the ratio to httpx's own transport.
"""

from __future__ import annotations

import argparse
import statistics

from bench.common import bearer, process, wrk
from scripts.devstack import free_port


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()

    upstream_port = free_port()
    results: dict[str, list[float]] = {"httpx": [], "aiohttp": []}
    token = bearer()
    with process("bench.static_upstream", str(upstream_port), env={}, health_url=f"http://127.0.0.1:{upstream_port}/"):
        for _ in range(args.rounds):
            for transport in results:
                port = free_port()
                env = {
                    "GATEWAY_PORT": str(port),
                    "GATEWAY_USERS_URL": f"http://127.0.0.1:{upstream_port}",
                    "GATEWAY_HTTP_TRANSPORT": transport,
                    "GATEWAY_ACCESS_LOG": "false",
                    "GATEWAY_LOG_LEVEL": "WARNING",
                }
                url = f"http://127.0.0.1:{port}/v1/users/me"
                with process("gateway", "serve", env=env, health_url=f"http://127.0.0.1:{port}/health/live"):
                    headers = {"Authorization": f"Bearer {token}"}
                    wrk(url, headers=headers, seconds=2, connections=args.connections)  # warm-up
                    results[transport].append(
                        wrk(
                            url, headers=headers, seconds=args.seconds, connections=args.connections
                        ).requests_per_second
                    )

    baseline = statistics.median(results["httpx"])
    print(f"\n{args.connections} connections, {args.seconds} s x {args.rounds} rounds, one gateway worker\n")
    print("| transport | req/s (median) | rounds | vs httpx |")
    print("|---|---|---|---|")
    for transport, values in results.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(f"| {transport} | {median:.0f} | {rounds} | {median / baseline:.2f}x |")


if __name__ == "__main__":
    main()
