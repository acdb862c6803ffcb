"""Webhook delivery on PostgreSQL: deliveries per second with 1 and 2 workers to a receiver that
answers at once, and the time from an event's commit to the receiver's 200 at a steady rate, with
the events spread over every endpoint and with all of them to one endpoint.

    .venv/bin/python -m bench.webhooks --events 2000 --rate 50 --seconds 20

Needs a PostgreSQL it may create a database on (TEST_DATABASE_URL, default the local one). The
workers are real `python -m services.webhooks worker` processes; the receiver runs in this process.
Deliveries are written straight into the webhooks database (as the relay writes them), so the figures
are the worker's own: the relay's poll interval comes on top for an order's event.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx

from bench.common import ROOT, migrated_database
from scripts.devstack import free_port
from services.webhooks.models import Delivery, Endpoint, Event
from services.webhooks.service import new_secret
from shared.db import new_id, utcnow

ENDPOINTS = 16


class InstantReceiver:
    """Answers 200 at once and notes when each webhook-id arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.count = 0
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                at = time.time()
                length = 0
                webhook_id = ""
                for line in head.split(b"\r\n"):
                    lower = line.lower()
                    if lower.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                    elif lower.startswith(b"webhook-id:"):
                        webhook_id = line.split(b":", 1)[1].strip().decode()
                await reader.readexactly(length)
                self.arrivals.setdefault(webhook_id, at)
                self.count += 1
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextmanager
def workers(url: str, count: int) -> Iterator[list[int]]:
    procs, ports = [], []
    for _ in range(count):
        port = free_port()
        env = {
            **os.environ,
            "WEBHOOKS_DATABASE_URL": url,
            "WEBHOOKS_WORKER_PORT": str(port),
            "WEBHOOKS_ALLOW_PRIVATE_URLS": "true",
            "WEBHOOKS_LOG_LEVEL": "WARNING",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "services.webhooks", "worker"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        ports.append(port)
    try:
        for port in ports:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("a worker did not get ready")
                time.sleep(0.1)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def due_delivery(endpoint: Endpoint, event: Event, now: datetime) -> Delivery:
    """A delivery of `event` to `endpoint`, pending and due at `now`, as the relay makes it."""
    return Delivery(
        id=new_id(),
        tenant_id=endpoint.tenant_id,
        event_id=event.id,
        endpoint_id=endpoint.id,
        event_type=event.type,
        status="pending",
        attempts=0,
        round_attempts=0,
        replays=0,
        next_attempt_at=now,
        created_at=now,
    )


class Feeder:
    """Writes events and their pending deliveries as the relay would."""

    def __init__(self, url: str, receiver_port: int) -> None:
        from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

        self.engine = create_async_engine(url)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self.receiver_url = f"http://127.0.0.1:{receiver_port}/hooks"
        self.endpoints: list[Endpoint] = []
        # Where the next delivery goes: every call carries on the round over the endpoints, so
        # deliveries added one at a time spread over them as a backlog does.
        self.cursor = 0

    async def setup(self, endpoints: int = ENDPOINTS) -> None:
        past = utcnow() - timedelta(minutes=1)
        async with self.sessionmaker.begin() as session:
            for _ in range(endpoints):
                endpoint = Endpoint(
                    id=new_id(),
                    tenant_id=str(uuid.uuid4()),
                    url=self.receiver_url,
                    events=["order.created"],
                    status="active",
                    secret=new_secret(),
                    created_at=past,
                    updated_at=past,
                )
                session.add(endpoint)
                self.endpoints.append(endpoint)

    async def add(self, count: int) -> list[str]:
        """`count` deliveries in one transaction; answers their webhook ids."""
        now = utcnow()
        events, deliveries = [], []
        for _ in range(count):
            endpoint = self.endpoints[self.cursor % len(self.endpoints)]
            self.cursor += 1
            event = Event(
                id=new_id(),
                seq=0,
                tenant_id=endpoint.tenant_id,
                type="order.created",
                data={"id": new_id(), "status": "placed", "total_cents": 1250},
                occurred_at=now,
                received_at=now,
            )
            events.append(event)
            deliveries.append(due_delivery(endpoint, event, now))
        async with self.sessionmaker.begin() as session:
            session.add_all(events)
            await session.flush()
            session.add_all(deliveries)
        return [d.webhook_id for d in deliveries]

    async def close(self) -> None:
        await self.engine.dispose()


async def wait_for(receiver: InstantReceiver, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(i not in receiver.arrivals for i in ids):
        if time.monotonic() > deadline:
            missing = sum(i not in receiver.arrivals for i in ids)
            raise TimeoutError(f"{missing} of {len(ids)} deliveries did not arrive in {timeout:.0f}s")
        await asyncio.sleep(0.01)


async def throughput(url: str, count: int, events: int) -> float:
    receiver = InstantReceiver()
    await receiver.start()
    feeder = Feeder(url, receiver.port)
    await feeder.setup()
    try:
        with workers(url, count):
            started = time.time()
            ids = await feeder.add(events)
            await wait_for(receiver, ids, timeout=600)
            elapsed = max(receiver.arrivals[i] for i in ids) - started
        return events / elapsed
    finally:
        await feeder.close()
        assert receiver.server is not None
        receiver.server.close()


@dataclass(frozen=True)
class Latency:
    p50: float
    p99: float
    events: int
    fed_rate: float  # events per second the feeder committed: below the asked rate, it fell behind


async def latency(url: str, rate: float, seconds: float, endpoints: int) -> Latency:
    receiver = InstantReceiver()
    await receiver.start()
    feeder = Feeder(url, receiver.port)
    await feeder.setup(endpoints)
    committed: dict[str, float] = {}
    try:
        with workers(url, 1):
            interval = 1 / rate
            started = next_at = time.monotonic()
            end = next_at + seconds
            while next_at < end:
                [webhook_id] = await feeder.add(1)
                committed[webhook_id] = time.time()
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            fed_rate = len(committed) / (time.monotonic() - started)
            await wait_for(receiver, list(committed), timeout=120)
        samples = sorted(receiver.arrivals[i] - at for i, at in committed.items())
        p50 = statistics.median(samples)
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
        return Latency(p50, p99, len(samples), fed_rate)
    finally:
        await feeder.close()
        assert receiver.server is not None
        receiver.server.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000, help="backlog delivered per throughput run")
    parser.add_argument("--workers", default="1,2", help="worker counts to measure throughput with")
    parser.add_argument("--rate", type=float, default=50, help="events per second in the latency run")
    parser.add_argument("--seconds", type=float, default=20, help="length of the latency run")
    args = parser.parse_args()
    admin = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    admin = admin.replace("postgresql+asyncpg://", "postgresql://", 1)
    print(f"PostgreSQL; receiver answering 200 at once; {ENDPOINTS} endpoints unless said; default worker settings")
    for count in (int(n) for n in args.workers.split(",")):
        async with migrated_database(admin, "webhooks") as url:
            rate = await throughput(url, count, args.events)
        print(f"throughput, {count} worker(s): {rate:.0f} deliveries/s ({args.events} deliveries)")
    # Spread over every endpoint, then all to one (which the per-endpoint bound limits).
    for endpoints in (ENDPOINTS, 1):
        async with migrated_database(admin, "webhooks") as url:
            found = await latency(url, args.rate, args.seconds, endpoints)
        print(
            f"commit -> receiver 200, {args.rate:g} events/s for {args.seconds:g}s, 1 worker, "
            f"{endpoints} endpoint(s): p50 {found.p50 * 1000:.0f} ms, p99 {found.p99 * 1000:.0f} ms "
            f"({found.events} events, fed at {found.fed_rate:.0f}/s)"
        )


if __name__ == "__main__":
    asyncio.run(main())
