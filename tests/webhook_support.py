"""What the delivery tests share: a webhooks database of their own, seeded rows, and real receivers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import asyncpg
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from services.webhooks.models import Delivery, Endpoint, Event
from services.webhooks.sender import Sender, create_session
from services.webhooks.service import new_secret
from services.webhooks.settings import WebhooksSettings
from services.webhooks.url_safety import Resolver
from services.webhooks.worker import DeliveryWorker, WorkerConfig, WorkerMetrics
from shared.db import create_engine, create_sessionmaker, new_id, utcnow
from shared.migrations import upgrade
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

    async def endpoint(self, url: str, *, tenant_id: str | None = None, **fields: object) -> Endpoint:
        now = utcnow() - timedelta(minutes=1)
        endpoint = Endpoint(
            id=new_id(),
            tenant_id=tenant_id or str(uuid.uuid4()),
            url=url,
            events=["order.cancelled", "order.created"],
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
    lease_seconds: float = 30.0,
    stop_grace: float = 5.0,
    poll_interval: float = 0.02,
    tracer_provider: TracerProvider | None = None,
) -> AsyncIterator[DeliveryWorker]:
    http = create_session(concurrency, endpoint_concurrency)
    sender = Sender(http, timeout=timeout, allow_private=allow_private, resolver=resolver)
    config = WorkerConfig(
        concurrency=concurrency,
        endpoint_concurrency=endpoint_concurrency,
        lease_seconds=lease_seconds,
        poll_interval=poll_interval,
        stop_grace=stop_grace,
        schedule=schedule,
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
