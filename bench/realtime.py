"""Real-time delivery: the time from an order event's write to its arrival at SSE and WebSocket
clients, the same for one tenant among many streaming tenants, and the gateway's memory per idle SSE
connection.

    .venv/bin/python -m bench.realtime --connections 100 --rate 10 --seconds 20 --idle 1000
    .venv/bin/python -m bench.realtime --redis-url redis://127.0.0.1:6379/0   # the gateway's streams in Redis
    .venv/bin/python -m bench.realtime --redis-url redis://127.0.0.1:6379/0 --tenants 300 --connections 0 --idle 0

Starts the five processes on the embedded defaults (SQLite per service) in a temporary folder, or
with the gateway's streams in Redis when `--redis-url` is given. One tenant holds `--connections`
SSE streams and as many WebSockets while orders are placed at `--rate` per second; each client notes
when each event arrived. Latency is arrival minus the event's `timestamp` (written with the order,
just before its transaction commits), so it includes the relay's poll interval. Then `--idle` more
SSE streams are opened and the gateway's RSS is read before and after.

With `--tenants N`, first N other tenants (tokens made up for them) each hold one SSE stream on the
gateway, and the bench's tenant, streaming too, places `--crowd-orders` orders at 2 per second: the
write-to-arrival time of its events says whether the others' streams hold it up (with Redis, every
streaming tenant used to hold one connection of the pool, `--redis-pool`, for its blocking read).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from bench.common import bearer, redis_prefix
from scripts.devstack import PROCESSES, Stack, free_port

PASSWORD = "correct-horse-9"


@contextlib.contextmanager
def stack(workdir: Path, redis_url: str | None, redis_pool: int | None) -> Iterator[Stack]:
    with contextlib.ExitStack() as scope:
        prefix = scope.enter_context(redis_prefix(redis_url)) if redis_url else None
        yield scope.enter_context(_stack(workdir, redis_url, prefix, redis_pool))


@contextlib.contextmanager
def _stack(workdir: Path, redis_url: str | None, prefix: str | None, redis_pool: int | None) -> Iterator[Stack]:
    env = {
        "PYTHONUNBUFFERED": "1",
        "GATEWAY_REALTIME_CONNECTIONS_PRO": "100000",
        "GATEWAY_RATE_LIMIT_PRO": "10000000/60s",
    }
    if redis_url and prefix:
        env["GATEWAY_REDIS_URL"] = redis_url
        env["GATEWAY_REDIS_KEY_PREFIX"] = prefix
    if redis_pool:
        env["GATEWAY_REDIS_MAX_CONNECTIONS"] = str(redis_pool)
    running = Stack(
        ports={name: free_port() for name in PROCESSES},
        env=env,
        log_dir=workdir / "log",
        cwd=workdir,
        workers=(),
    )
    running.migrate()
    try:
        running.start(timeout=180)
        yield running
    finally:
        running.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def written_at(envelope: dict) -> float:
    return datetime.fromisoformat(envelope["timestamp"].replace("Z", "+00:00")).timestamp()


async def sse_client(port: int, token: str, latencies: list[float], ready: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    ready.set()
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            # Chunked transfer: the data line is inside a chunk; find it wherever it starts.
            at = line.find(b"data: ")
            if at >= 0:
                latencies.append(time.time() - written_at(json.loads(line[at + 6 :])))
    finally:
        writer.close()


async def ws_client(url: str, latencies: list[float], ready: asyncio.Event) -> None:
    async with connect(url, max_queue=None) as ws:
        ready.set()
        async for message in ws:
            frame = json.loads(message)
            if "data" in frame:
                latencies.append(time.time() - written_at(frame["data"]))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


async def among_tenants(
    args: argparse.Namespace, client: httpx.AsyncClient, port: int, token: str, product_id: str
) -> None:
    """The bench's tenant's write-to-arrival time while `--tenants` other tenants hold a stream each."""
    readies = [asyncio.Event() for _ in range(args.tenants)]
    others = [
        asyncio.create_task(sse_client(port, bearer(scopes="orders:read", plan="pro"), [], ready)) for ready in readies
    ]
    for start_at in range(0, args.tenants, 100):
        await asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in readies[start_at : start_at + 100])), 60)
    latencies: list[float] = []
    mine_ready = asyncio.Event()
    mine = asyncio.create_task(sse_client(port, token, latencies, mine_ready))
    await asyncio.wait_for(mine_ready.wait(), 60)
    await asyncio.sleep(2)  # every stream subscribed behind its answer's head
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(args.crowd_orders):
        order = await client.post(
            "/v1/orders", json={"items": [{"product_id": product_id, "quantity": 1}]}, headers=auth
        )
        order.raise_for_status()
        await asyncio.sleep(0.5)
    deadline = time.monotonic() + 60
    while len(latencies) < args.crowd_orders and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for task in [*others, mine]:
        task.cancel()
    await asyncio.gather(*others, mine, return_exceptions=True)
    print(f"{args.crowd_orders} orders at 2/s by one tenant streaming among {args.tenants} other streaming tenants")
    if not latencies:
        print("write -> its SSE client: no events arrived within 60 s of the last order")
        return
    print(
        f"write -> its SSE client: p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms "
        f"({len(latencies)} of {args.crowd_orders} events)"
    )


async def measure(args: argparse.Namespace, running: Stack) -> None:
    base = running.url()
    port = running.ports["gateway"]
    pid = running.procs["gateway"].pid
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        created = await client.post(
            "/v1/tenants", json={"name": "Bench", "plan": "pro", "admin_email": email, "admin_password": PASSWORD}
        )
        created.raise_for_status()
        token = (await client.post("/v1/auth/token", data={"username": email, "password": PASSWORD})).json()[
            "access_token"
        ]
        auth = {"Authorization": f"Bearer {token}"}
        product = await client.post(
            "/v1/products",
            json={"sku": "BENCH", "name": "Mug", "price_cents": 1, "stock": 1_000_000},
            headers=auth,
        )
        product.raise_for_status()
        product_id = product.json()["id"]

        if args.tenants:
            await among_tenants(args, client, port, token, product_id)
        if not args.connections:
            return

        sse: list[float] = []
        ws: list[float] = []
        readies = [asyncio.Event() for _ in range(2 * args.connections)]
        ws_url = base.replace("http://", "ws://", 1) + f"/v1/ws?token={token}"
        clients = [
            *(asyncio.create_task(sse_client(port, token, sse, readies[i])) for i in range(args.connections)),
            *(
                asyncio.create_task(ws_client(ws_url, ws, readies[args.connections + i]))
                for i in range(args.connections)
            ),
        ]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
        placed = 0
        start = time.monotonic()
        while time.monotonic() - start < args.seconds:
            due = start + placed / args.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            order = await client.post(
                "/v1/orders", json={"items": [{"product_id": product_id, "quantity": 1}]}, headers=auth
            )
            order.raise_for_status()
            placed += 1
        expected = placed * args.connections
        deadline = time.monotonic() + 30
        while (len(sse) < expected or len(ws) < expected) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        print(f"{placed} orders at {args.rate:g}/s, {args.connections} SSE + {args.connections} WebSocket clients")
        for name, values in (("SSE", sse), ("WebSocket", ws)):
            if not values:
                print(f"{name}: no events arrived")
                continue
            print(
                f"write -> {name} client: p50 {percentile(values, 0.5) * 1000:.0f} ms, "
                f"p99 {percentile(values, 0.99) * 1000:.0f} ms, mean {statistics.fmean(values) * 1000:.0f} ms "
                f"({len(values)} of {expected} deliveries)"
            )

        if args.idle:
            idle_ready = [asyncio.Event() for _ in range(args.idle)]
            warm = [asyncio.create_task(sse_client(port, token, [], asyncio.Event())) for _ in range(10)]
            await asyncio.sleep(1)
            before = rss_kib(pid)
            idle: list[asyncio.Task[None]] = []
            for start_at in range(0, args.idle, 100):
                batch = range(start_at, min(args.idle, start_at + 100))
                idle += [asyncio.create_task(sse_client(port, token, [], idle_ready[i])) for i in batch]
                await asyncio.wait_for(asyncio.gather(*(idle_ready[i].wait() for i in batch)), 60)
            after = rss_kib(pid)
            print(
                f"{args.idle} idle SSE connections: {(after - before) / args.idle:.1f} KiB each "
                f"(gateway RSS {before} -> {after} KiB)"
            )
            for task in [*warm, *idle]:
                task.cancel()
            await asyncio.gather(*warm, *idle, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=100, help="SSE streams, and as many WebSockets")
    parser.add_argument("--rate", type=float, default=10, help="orders per second")
    parser.add_argument("--seconds", type=float, default=20, help="length of the latency run")
    parser.add_argument("--idle", type=int, default=1000, help="idle SSE connections for the memory figure")
    parser.add_argument("--redis-url", default=None, help="keep the gateway's streams in this Redis")
    parser.add_argument("--redis-pool", type=int, default=None, help="GATEWAY_REDIS_MAX_CONNECTIONS (default 200)")
    parser.add_argument("--tenants", type=int, default=0, help="other tenants streaming, one SSE stream each")
    parser.add_argument("--crowd-orders", type=int, default=20, help="orders placed while --tenants stream")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-realtime-") as workdir,
        stack(Path(workdir), args.redis_url, args.redis_pool) as running,
    ):
        asyncio.run(measure(args, running))


if __name__ == "__main__":
    main()
