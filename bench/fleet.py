"""A service called as a fleet: three instances behind `ServiceClient.forward` (shared/http.py).

    python -m bench.fleet stopped [--seconds 5] [--concurrency 32]
        All healthy, then one instance stopped (SIGSTOP): throughput and p50/p99 latency of the calls,
        before the instance is ejected (the first UPSTREAM_STALL_SECONDS) and after.
    python -m bench.fleet balancers [--seconds 5] [--concurrency 32]
        One of the three instances answers 20 ms slower: least_request against peak_ewma.
    python -m bench.fleet cost [--calls 20000] [--source DIR]
        CPU time per `forward` call with one URL (the default), and with a fleet of three when the
        code has fleets. `--source` runs the same measurement on another checkout of the code
        (`git archive <commit> | tar -x -C /tmp/before`), to compare before and after a change.

The instances are separate processes (`python -m bench.fleet serve PORT DELAY_MS`); the client, its
pool and the measurement run in this one. Quote figures with the command and what else ran.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.static_upstream import BODY

ROOT = Path(__file__).resolve().parent.parent
CLIENT_IDENTITY = {"subject": "bench", "tenant_id": "bench"}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An instance: the same small JSON document for every request, after DELAY_MS."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if DELAY and scope["path"] != "/health/ready":
        await asyncio.sleep(DELAY)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


DELAY = 0.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def instances(delays_ms: list[int]) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for delay in delays_ms:
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-m", "bench.fleet", "serve", str(port), str(delay)], cwd=ROOT)
            started.append((f"http://127.0.0.1:{port}", proc))
        for url, _ in started:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not start")
                time.sleep(0.05)
        yield started
    finally:
        for _, proc in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            proc.wait(10)


def client(urls: str, **settings: Any) -> Any:
    """A ServiceClient of `urls` on its own pool (imported late: `cost --source` swaps the code)."""
    from opentelemetry.sdk.trace import TracerProvider

    from shared.http import ServiceClient
    from shared.identity_token import IdentitySigner
    from shared.settings import ProcessSettings

    try:
        from shared.calls import CallPolicy
        from shared.pool import create_http_pool
    except ImportError:  # code from before these had modules of their own
        from shared.http import CallPolicy, create_http_pool

    config = ProcessSettings(**settings)
    provider = TracerProvider()
    pool = create_http_pool(config, provider)
    policy = CallPolicy(config, tracer_provider=provider)
    service = ServiceClient("inventory", urls, pool.client, IdentitySigner("s" * 48, 60), policy, session=pool.session)
    return service, pool, policy


async def call(service: Any) -> None:
    from shared.contract import Identity

    await service.forward(
        "GET",
        "/products/p-1",
        identity=Identity(**CLIENT_IDENTITY),
        headers=[],
        body=None,
        span_name="GET inventory /products/{product_id}",
        template="/products/{product_id}",
        keep=frozenset({b"content-type"}),
    )


async def load(service: Any, seconds: float, concurrency: int) -> list[tuple[float, float]]:
    """(start, latency) of every call made by `concurrency` callers for `seconds`."""
    samples: list[tuple[float, float]] = []
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        while (started := time.perf_counter()) < stop:
            await call(service)
            samples.append((started, time.perf_counter() - started))

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return samples


def summary(name: str, samples: list[tuple[float, float]], seconds: float) -> str:
    latencies = sorted(latency for _, latency in samples)
    if not latencies:
        return f"| {name} | 0 | - | - |"
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    return f"| {name} | {len(latencies) / seconds:,.0f} | {p50:.1f} | {p99:.1f} |"


async def stopped(seconds: float, concurrency: int) -> None:
    stall = 1.0
    with instances([0, 0, 0]) as started:
        urls = ",".join(url for url, _ in started)
        service, pool, policy = client(
            urls, upstream_stall_seconds=stall, http_timeout_seconds=seconds * 4, upstream_ejection_max_seconds=60
        )
        try:
            await load(service, 1, concurrency)  # warm the pool
            rows = ["| phase | calls/s | p50 ms | p99 ms |", "|---|---|---|---|"]
            rows.append(summary("all three healthy", await load(service, seconds, concurrency), seconds))
            frozen = started[2][1].pid
            os.kill(frozen, signal.SIGSTOP)
            stopped_at = time.perf_counter()
            # Thawed when the window ends: the calls it held are answered then, and counted with
            # their whole wait (in the first window's p99).
            asyncio.get_running_loop().call_later(stall + seconds, os.kill, frozen, signal.SIGCONT)
            samples = await load(service, stall + seconds, concurrency)
            before = [s for s in samples if s[0] < stopped_at + stall]
            after = [s for s in samples if s[0] >= stopped_at + stall]
            rows.append(summary(f"one stopped, first {stall:g} s (before ejection)", before, stall))
            rows.append(summary("one stopped, after ejection", after, seconds))
            ejected = policy.metrics.fleet.ejections.labels("inventory")._value.get()
            print("\n".join(rows))
            print(f"ejections: {ejected:g}")
        finally:
            await policy.aclose()
            await pool.aclose()


async def balancers(seconds: float, concurrency: int) -> None:
    with instances([5, 5, 25]) as started:
        urls = ",".join(url for url, _ in started)
        rows = ["| balancer | calls/s | p50 ms | p99 ms | share of the slow instance |", "|---|---|---|---|---|"]
        for balancer in ("least_request", "peak_ewma"):
            service, pool, policy = client(urls, upstream_balancer=balancer)
            try:
                await load(service, 1, concurrency)
                samples = await load(service, seconds, concurrency)
                text = summary(balancer, samples, seconds)
                counts = {
                    key[3]: child._value.get()
                    for key, child in policy.metrics._requests.children.items()
                    if key[2] == "200"
                }
                slow = started[2][0].removeprefix("http://")
                rows.append(f"{text} {counts.get(slow, 0) / max(1, sum(counts.values())):.0%} |")
            finally:
                await policy.aclose()
                await pool.aclose()
        print("\n".join(rows))


async def cost(calls: int) -> None:
    with instances([0, 0, 0]) as started:
        setups = {"one URL": started[0][0]}
        try:
            from shared import fleet  # noqa: F401 - only to know whether this code has fleets

            setups["fleet of three"] = ",".join(url for url, _ in started)
        except ImportError:
            pass
        for name, urls in setups.items():
            service, pool, policy = client(urls)
            try:
                for _ in range(500):
                    await call(service)
                rounds = []
                for _ in range(5):
                    cpu = time.process_time()
                    await asyncio.gather(*(_calls(service, calls // 16) for _ in range(16)))
                    rounds.append((time.process_time() - cpu) / (calls // 16 * 16) * 1e6)
                each = ", ".join(f"{r:.1f}" for r in rounds)
                print(f"{name}: {statistics.median(rounds):.1f} us CPU per call (rounds: {each})")
            finally:
                await policy.aclose() if hasattr(policy, "aclose") else None
                await pool.aclose()


async def _calls(service: Any, count: int) -> None:
    for _ in range(count):
        await call(service)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("stopped", "balancers"):
        sub = commands.add_parser(name)
        sub.add_argument("--seconds", type=float, default=5.0)
        sub.add_argument("--concurrency", type=int, default=32)
    measured = commands.add_parser("cost")
    measured.add_argument("--calls", type=int, default=20_000)
    measured.add_argument("--source", type=Path, default=None)
    serve = commands.add_parser("serve")
    serve.add_argument("port", type=int)
    serve.add_argument("delay_ms", type=int)
    args = parser.parse_args()
    if args.command == "serve":
        import uvicorn

        global DELAY
        DELAY = args.delay_ms / 1000
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    elif args.command == "stopped":
        asyncio.run(stopped(args.seconds, args.concurrency))
    elif args.command == "balancers":
        asyncio.run(balancers(args.seconds, args.concurrency))
    else:
        if args.source is not None:
            # The measured code is the other checkout's; this script and its instances stay.
            sys.path.insert(0, str(args.source.resolve()))
            for module in [m for m in sys.modules if m.split(".")[0] == "shared"]:
                del sys.modules[module]
        asyncio.run(cost(args.calls))


if __name__ == "__main__":
    main()
