"""What the delivery tests share: a webhooks database of their own, seeded rows, and real receivers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from scripts.devstack import free_port
from services.webhooks.delivery_repository import NEVER_DISABLE, FailureRule
from services.webhooks.models import Delivery, Endpoint, Event
from services.webhooks.sender import Sender, create_session
from services.webhooks.service import new_secret
from services.webhooks.settings import WebhooksSettings
from services.webhooks.url_safety import Resolver
from services.webhooks.worker import DeliveryWorker, WorkerConfig, WorkerMetrics
from shared.db import create_engine, create_sessionmaker, new_id, utcnow
from shared.migrations import upgrade
from tests.conftest import INTERNAL_SECRET
from tests.infra import Servers

ROOT = Path(__file__).resolve().parent.parent
WEBHOOKS_DIR = ROOT / "services" / "webhooks"


@dataclass
class HooksDb:
    url: str  # SQLAlchemy URL
    dsn: str | None  # libpq DSN (PostgreSQL only)
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]

    @property
    def is_postgres(self) -> bool:
        return self.dsn is not None

    async def fetchval(self, query: str, *args: object) -> object:
        """One value, read underneath the ORM (PostgreSQL only)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    async def endpoint(
        self, url: str, *, tenant_id: str | None = None, events: list[str] | None = None, **fields: object
    ) -> Endpoint:
        now = utcnow() - timedelta(minutes=1)
        endpoint = Endpoint(
            id=new_id(),
            tenant_id=tenant_id or str(uuid.uuid4()),
            url=url,
            events=events or ["order.cancelled", "order.created"],
            status="active",
            secret=new_secret(),
            created_at=now,
            updated_at=now,
            **fields,
        )
        async with self.sessionmaker.begin() as session:
            session.add(endpoint)
        return endpoint

    async def deliveries(self, endpoint: Endpoint, count: int = 1, event_type: str = "order.created") -> list[Delivery]:
        """`count` new events of the endpoint's tenant, each with its pending delivery."""
        now = utcnow()
        made = []
        async with self.sessionmaker.begin() as session:
            for _ in range(count):
                order_id = new_id()
                event = Event(
                    id=new_id(),
                    seq=0,
                    tenant_id=endpoint.tenant_id,
                    type=event_type,
                    data={"id": order_id, "status": "placed", "total_cents": 1250},
                    occurred_at=now,
                    received_at=now,
                )
                session.add(event)
                await session.flush()  # no ORM relationship orders the inserts
                delivery = Delivery(
                    id=new_id(),
                    tenant_id=endpoint.tenant_id,
                    event_id=event.id,
                    endpoint_id=endpoint.id,
                    event_type=event_type,
                    status="pending",
                    attempts=0,
                    round_attempts=0,
                    replays=0,
                    next_attempt_at=now,
                    created_at=now,
                )
                session.add(delivery)
                made.append(delivery)
        return made

    async def delivery(self, delivery_id: str) -> Delivery:
        async with self.sessionmaker() as session:
            found = await session.get(Delivery, delivery_id)
            assert found is not None
            return found

    async def statuses(self, deliveries: list[Delivery]) -> list[str]:
        return [(await self.delivery(d.id)).status for d in deliveries]


async def _create_pg(migrated: Servers, tag: str) -> tuple[str, str]:
    name = f"{migrated.database_name('webhooks')}_{tag}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(migrated.pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = f"{migrated.pg_admin_dsn.rpartition('/')[0]}/{name}"
    return name, dsn


async def _drop_pg(migrated: Servers, name: str) -> None:
    admin = await asyncpg.connect(migrated.pg_admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def hooks_db(migrated: Servers, kind: str, tmp_path: Path) -> AsyncIterator[HooksDb]:
    """A migrated webhooks database of the test's own: PostgreSQL, or a SQLite file."""
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'webhooks.db'}"
        await asyncio.to_thread(upgrade, WEBHOOKS_DIR, url)
        engine = create_engine(WebhooksSettings(database_url=url))
        try:
            yield HooksDb(url, None, engine, create_sessionmaker(engine))
        finally:
            await engine.dispose()
        return
    name, dsn = await _create_pg(migrated, "delivery")
    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(url, pool_size=10)
    try:
        await asyncio.to_thread(upgrade, WEBHOOKS_DIR, url)
        yield HooksDb(url, dsn, engine, async_sessionmaker(engine, expire_on_commit=False))
    finally:
        await engine.dispose()
        await _drop_pg(migrated, name)


# Receivers: real sockets that answer as each test says.


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    def json(self) -> dict:
        return json.loads(self.body)


Handler = Callable[[Received, asyncio.StreamWriter], Awaitable[bool]]


def http_answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    async def handle(_: Received, writer: asyncio.StreamWriter) -> bool:
        writer.write(http_answer(status, body, headers))
        await writer.drain()
        return True

    return handle


@dataclass
class Receiver:
    """An HTTP/1.1 server on a real socket that records every request and answers with `handler`
    (which says whether the connection may serve another request)."""

    handler: Handler = field(default_factory=lambda: answer(204))
    host: str = "127.0.0.1"
    port: int = 0
    received: list[Received] = field(default_factory=list)
    open_connections: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.Server | None = None
    connections: set[asyncio.Task[None]] = field(default_factory=set)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hooks"

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()
        # Requests still held (a receiver that never answers) end with the receiver, and so do
        # connections whose handler had not started yet.
        for task in self.connections:
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)
        for writer in self.writers:
            writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.server.wait_closed(), 5)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Called as the connection is made, so every connection is known before its task runs.
        self.writers.append(writer)
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self.connections.add(task)
        task.add_done_callback(self.connections.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = {}
                for line in header_lines:
                    if ":" in line:
                        key, value = line.split(":", 1)
                        headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Received(method, path, headers, body)
                self.received.append(request)
                self.arrived.set()
                if not await self.handler(request, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            # A receiver that was still holding a request when the test ended is simply closed.
            return
        finally:
            self.open_connections -= 1
            writer.close()

    async def wait_for(self, count: int, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 60.0, interval: float = 0.05) -> None:
    """Waits for a condition; the deadline is generous, the machine is shared."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(interval)


# The worker, in-process, on the test's database.


@contextlib.asynccontextmanager
async def running_worker(
    db: HooksDb,
    *,
    resolver: Resolver | None = None,
    allow_private: bool = True,
    timeout: float = 5.0,
    schedule: tuple[float, ...] = (0.05, 0.05),
    concurrency: int = 8,
    endpoint_concurrency: int = 4,
    tenant_concurrency: int = 8,
    tenant_host_concurrency: int = 4,
    failure_rule: FailureRule = NEVER_DISABLE,
    retention_batch: int = 1000,
    lease_seconds: float = 30.0,
    stop_grace: float = 5.0,
    poll_interval: float = 0.02,
    tracer_provider: TracerProvider | None = None,
) -> AsyncIterator[DeliveryWorker]:
    http = create_session(concurrency)
    sender = Sender(http, timeout=timeout, allow_private=allow_private, resolver=resolver)
    config = WorkerConfig(
        concurrency=concurrency,
        endpoint_concurrency=endpoint_concurrency,
        lease_seconds=lease_seconds,
        poll_interval=poll_interval,
        stop_grace=stop_grace,
        schedule=schedule,
        tenant_concurrency=tenant_concurrency,
        tenant_host_concurrency=tenant_host_concurrency,
        failure_rule=failure_rule,
        retention_batch=retention_batch,
    )
    provider = tracer_provider or TracerProvider()
    worker = DeliveryWorker(
        db.sessionmaker, sender, config, WorkerMetrics(CollectorRegistry()), provider.get_tracer("test")
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await http.close()


# The worker as real processes.

# How long a worker process's lease lasts, unless a test says otherwise.
WORKER_LEASE_SECONDS = 10


class Workers:
    """`python -m services.webhooks worker` processes on the test's database."""

    def __init__(self, db: HooksDb, log_dir: Path) -> None:
        self.db = db
        self.log_dir = log_dir
        self.procs: list[tuple[subprocess.Popen[bytes], int]] = []

    def start(self, **env: str) -> tuple[subprocess.Popen[bytes], int]:
        """A worker, with `env` over the tests' defaults (a short timeout and lease, fast retries)."""
        port = free_port()
        env = {
            **os.environ,
            "WEBHOOKS_ENVIRONMENT": "test",
            "WEBHOOKS_INTERNAL_TOKEN_SECRET": INTERNAL_SECRET,
            "WEBHOOKS_DATABASE_URL": self.db.url,
            "WEBHOOKS_DB_POOL_SIZE": "4",
            "WEBHOOKS_WORKER_PORT": str(port),
            "WEBHOOKS_ALLOW_PRIVATE_URLS": "true",
            "WEBHOOKS_DELIVERY_TIMEOUT_SECONDS": "5",
            "WEBHOOKS_DELIVERY_LEASE_SECONDS": str(WORKER_LEASE_SECONDS),
            "WEBHOOKS_RETRY_SCHEDULE_SECONDS": "0.5,0.5,0.5,0.5",
            "WEBHOOKS_WORKER_POLL_INTERVAL_SECONDS": "0.05",
            "OTEL_SERVICE_NAME": "webhooks-worker",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        log = open(self.log_dir / f"worker-{port}.log", "ab")  # noqa: SIM115 - the child keeps its own copy
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.webhooks", "worker"],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.procs.append((proc, port))
        return proc, port

    async def ready(self, port: int, timeout: float = 60.0) -> None:
        async def answers() -> bool:
            try:
                async with httpx.AsyncClient(timeout=2) as client:
                    return (await client.get(f"http://127.0.0.1:{port}/health/ready")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(answers, timeout, interval=0.2)

    async def started(self, count: int = 1, **env: str) -> list[int]:
        """`count` workers, started at once and ready; answers their ports."""
        ports = [self.start(**env)[1] for _ in range(count)]
        for port in ports:
            await self.ready(port)
        return ports

    async def metrics(self, port: int) -> str:
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(f"http://127.0.0.1:{port}/metrics")).text

    async def metric(self, port: int, sample: str) -> float:
        """One sample's value, e.g. `portico_webhook_deliveries_total{outcome="succeeded"}`."""
        text = await self.metrics(port)
        return float(text.split("\n" + sample + " ")[1].split()[0])

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
