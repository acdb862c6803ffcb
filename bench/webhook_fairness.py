"""Webhook fairness on PostgreSQL: the time from a delivery's commit to its receiver's answer for a
tenant with one fast endpoint, alone and beside another tenant whose ten endpoints answer only after
`--slow-seconds` each, with that fast receiver on another host and on the same host:port as the
slow ones.

    .venv/bin/python -m bench.webhook_fairness --slow-seconds 10 --fast 10

One worker process with its default bounds (`python -m services.webhooks worker`); the receivers run
in this process. Deliveries are written straight into the webhooks database, as the relay writes
them. Needs a PostgreSQL it may create a database on (TEST_DATABASE_URL, default the local one).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from bench.common import migrated_database
from bench.webhooks import due_delivery, workers
from services.webhooks.models import Endpoint, Event
from services.webhooks.service import new_secret
from shared.db import new_id, utcnow

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


class Receiver:
    """Answers paths under /slow after `slow` seconds, others at once; notes when each webhook-id arrived."""

    def __init__(self, slow: float) -> None:
        self.slow = slow
        self.arrivals: dict[str, float] = {}
        self.port = 0

    async def start(self, host: str) -> asyncio.Server:
        server = await asyncio.start_server(self._serve, host, 0, backlog=1024)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                arrived = time.monotonic()
                path = head.split(b" ", 2)[1]
                length, webhook_id = 0, ""
                for line in head.split(b"\r\n"):
                    lower = line.lower()
                    if lower.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                    elif lower.startswith(b"webhook-id:"):
                        webhook_id = line.split(b":", 1)[1].strip().decode()
                await reader.readexactly(length)
                if path.startswith(b"/slow"):
                    await asyncio.sleep(self.slow)
                else:
                    self.arrivals.setdefault(webhook_id, arrived)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def add_endpoint(sessionmaker: async_sessionmaker[AsyncSession], url: str, tenant_id: str) -> Endpoint:
    made = utcnow() - timedelta(minutes=1)
    endpoint = Endpoint(
        id=new_id(),
        tenant_id=tenant_id,
        url=url,
        events=["order.created"],
        status="active",
        secret=new_secret(),
        created_at=made,
        updated_at=made,
    )
    async with sessionmaker.begin() as session:
        session.add(endpoint)
    return endpoint


async def add_deliveries(sessionmaker: async_sessionmaker[AsyncSession], endpoint: Endpoint, count: int) -> list[str]:
    """`count` due deliveries of `endpoint`; answers their webhook-ids."""
    now = utcnow()
    ids = []
    async with sessionmaker.begin() as session:
        for _ in range(count):
            event = Event(
                id=new_id(),
                seq=0,
                tenant_id=endpoint.tenant_id,
                type="order.created",
                data={"id": new_id()},
                occurred_at=now,
                received_at=now,
            )
            session.add(event)
            await session.flush()
            delivery = due_delivery(endpoint, event, now)
            session.add(delivery)
            ids.append(delivery.webhook_id)
    return ids


async def fast_latencies(
    sessionmaker: async_sessionmaker[AsyncSession], receiver: Receiver, endpoint: Endpoint, count: int
) -> list[float]:
    """Seconds from the commit of each of `count` deliveries, one every half second, to its arrival."""
    latencies = []
    for _ in range(count):
        made = time.monotonic()
        [webhook_id] = await add_deliveries(sessionmaker, endpoint, 1)
        deadline = made + 300
        while webhook_id not in receiver.arrivals and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        latencies.append(receiver.arrivals.get(webhook_id, float("inf")) - made)
        await asyncio.sleep(max(0.0, made + 0.5 - time.monotonic()))
    return latencies


def summary(latencies: list[float]) -> str:
    return f"p50 {statistics.median(latencies):.3f}s, max {max(latencies):.3f}s ({len(latencies)} deliveries)"


async def run(args: argparse.Namespace, same_host: bool) -> None:
    async with migrated_database(os.environ.get("TEST_DATABASE_URL", DEFAULT_DSN), "webhooks") as url:
        engine = create_async_engine(url)
        sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        receiver = Receiver(args.slow_seconds)
        slow_server = await receiver.start("127.0.0.1")
        fast_receiver, fast_server = receiver, None
        if not same_host:
            fast_receiver = Receiver(args.slow_seconds)
            fast_server = await fast_receiver.start("127.0.0.2")
        fast_host = "127.0.0.1" if same_host else "127.0.0.2"
        try:
            with workers(url, 1):
                fast = await add_endpoint(
                    sessionmaker, f"http://{fast_host}:{fast_receiver.port}/fast", str(uuid.uuid4())
                )
                alone = await fast_latencies(sessionmaker, fast_receiver, fast, args.fast)
                slow_tenant = str(uuid.uuid4())
                for i in range(args.slow_endpoints):
                    slow = await add_endpoint(sessionmaker, f"http://127.0.0.1:{receiver.port}/slow/{i}", slow_tenant)
                    await add_deliveries(sessionmaker, slow, args.per_endpoint)
                await asyncio.sleep(1)  # the slow tenant's attempts are under way
                beside = await fast_latencies(sessionmaker, fast_receiver, fast, args.fast)
        finally:
            slow_server.close()
            if fast_server is not None:
                fast_server.close()
            await engine.dispose()
    where = "same host:port as the slow receivers" if same_host else "another host"
    print(f"fast receiver on {where}:")
    print(f"  alone:                      {summary(alone)}")
    print(f"  beside the slow tenant:     {summary(beside)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow-seconds", type=float, default=10.0, help="how long each slow receiver takes")
    parser.add_argument("--slow-endpoints", type=int, default=10)
    parser.add_argument("--per-endpoint", type=int, default=20, help="due deliveries per slow endpoint")
    parser.add_argument("--fast", type=int, default=10, help="fast deliveries measured, one every 0.5 s")
    args = parser.parse_args()
    for same_host in (False, True):
        asyncio.run(run(args, same_host))


if __name__ == "__main__":
    main()
