"""The delivery worker as real processes on PostgreSQL: killed with SIGKILL at each stage of an
attempt, and three of them sharing one queue.

At least once: whatever stage a worker dies at, the event still arrives, and a duplicate carries the
same `webhook-id`. Exactly once when nothing fails: three workers, 500 deliveries, 500 requests.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from tests.infra import Servers
from tests.webhook_support import (
    WORKER_LEASE_SECONDS,
    HooksDb,
    Received,
    Receiver,
    Workers,
    answer,
    eventually,
    hooks_db,
    http_answer,
)

LEASE_SECONDS = WORKER_LEASE_SECONDS


@pytest.fixture
async def pg(migrated: Servers, tmp_path) -> AsyncIterator[HooksDb]:
    async with hooks_db(migrated, "postgresql", tmp_path) as found:
        yield found


@pytest.fixture
def workers(pg: HooksDb, tmp_path) -> Iterator[Workers]:
    running = Workers(pg, tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


async def alive_and(proc: subprocess.Popen[bytes], check) -> bool:
    assert proc.poll() is None, "the worker exited; see its log"
    return await check


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


async def status_of(db: HooksDb, delivery_id: str) -> str:
    return (await db.delivery(delivery_id)).status


async def delivered_after_restart(db: HooksDb, workers: Workers, delivery) -> None:
    _, port = workers.start()
    await workers.ready(port)
    # The dead worker's lease lapses, then the new one delivers.
    await eventually(lambda: _is(db, delivery.id, "succeeded"), timeout=LEASE_SECONDS + 60)


async def _is(db: HooksDb, delivery_id: str, status: str) -> bool:
    return await status_of(db, delivery_id) == status


async def test_killed_after_claiming_before_sending(pg, workers):
    # A listener whose accept queue is full: the worker's connect waits, so it holds its claim and
    # has sent nothing when it dies.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(0)
    port = blocker.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    endpoint = await pg.endpoint(f"http://127.0.0.1:{port}/hooks")
    [delivery] = await pg.deliveries(endpoint)
    proc, _ = workers.start()
    await eventually(lambda: alive_and(proc, _leased(pg, delivery.id)))
    kill(proc)
    filler.close()
    blocker.close()
    async with Receiver(port=port) as receiver:
        await delivered_after_restart(pg, workers, delivery)
    assert [r.webhook_id for r in receiver.received] == [delivery.webhook_id]
    stored = await pg.delivery(delivery.id)
    assert (stored.attempts, stored.lease_token) == (1, None)


async def _leased(db: HooksDb, delivery_id: str) -> bool:
    return (await db.delivery(delivery_id)).lease_token is not None


async def test_killed_while_sending(pg, workers):
    hold = asyncio.Event()

    async def holds(_: Received, writer: asyncio.StreamWriter) -> bool:
        await hold.wait()
        return False

    async with Receiver(holds) as receiver:
        endpoint = await pg.endpoint(receiver.url)
        [delivery] = await pg.deliveries(endpoint)
        proc, _ = workers.start()
        await receiver.wait_for(1)
        kill(proc)
        receiver.handler = answer(204)
        await delivered_after_restart(pg, workers, delivery)
        hold.set()
    # The first request arrived and was never answered; the second is the same webhook.
    assert [r.webhook_id for r in receiver.received] == [delivery.webhook_id] * 2
    assert receiver.received[0].body == receiver.received[1].body


async def test_killed_after_the_answer_before_recording_it(pg, workers):
    locker: asyncpg.Connection | None = None

    async def locks_then_answers(request: Received, writer: asyncio.StreamWriter) -> bool:
        # The worker's record step will wait on this row lock: the answer is out, the outcome not in.
        nonlocal locker
        locker = await asyncpg.connect(pg.dsn)
        await locker.execute("BEGIN")
        await locker.execute("SELECT id FROM webhook_deliveries FOR UPDATE")
        writer.write(http_answer(204))
        await writer.drain()
        return False

    async with Receiver(locks_then_answers) as receiver:
        endpoint = await pg.endpoint(receiver.url)
        [delivery] = await pg.deliveries(endpoint)
        proc, _ = workers.start()
        await receiver.wait_for(1)
        await eventually(lambda: alive_and(proc, _someone_waits_on_a_lock(pg)))
        kill(proc)
        receiver.handler = answer(204)
        assert locker is not None
        await locker.close()  # rolls back; the dead worker's transaction never commits
        await delivered_after_restart(pg, workers, delivery)
    assert [r.webhook_id for r in receiver.received] == [delivery.webhook_id] * 2
    stored = await pg.delivery(delivery.id)
    assert stored.attempts == 1  # the first attempt's outcome was never recorded


async def _someone_waits_on_a_lock(db: HooksDb) -> bool:
    conn = await asyncpg.connect(db.dsn)
    try:
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    finally:
        await conn.close()
    return bool(waiting)


async def test_three_workers_deliver_500_events_exactly_once(pg, workers):
    async def briefly(_: Received, writer: asyncio.StreamWriter) -> bool:
        # A receiver that takes a moment, as real ones do: the work outlasts any one worker's claim.
        await asyncio.sleep(0.02)
        writer.write(http_answer(204))
        await writer.drain()
        return True

    async with Receiver(briefly) as receiver:
        # Every worker is polling before the first delivery is due, so each can take a share.
        ports = await workers.started(3)
        deliveries = []
        for _ in range(10):
            deliveries += await pg.deliveries(await pg.endpoint(receiver.url), 50)

        async def all_delivered() -> bool:
            conn = await asyncpg.connect(pg.dsn)
            try:
                left = await conn.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status <> 'succeeded'")
            finally:
                await conn.close()
            return left == 0

        await eventually(all_delivered, timeout=180, interval=0.2)
        # What each worker delivered, by its own count.
        counts = [await workers.metric(port, 'portico_webhook_deliveries_total{outcome="succeeded"}') for port in ports]
    assert len(receiver.received) == 500
    assert {r.webhook_id for r in receiver.received} == {d.webhook_id for d in deliveries}
    conn = await asyncpg.connect(pg.dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries WHERE attempts <> 1") == 0
        assert await conn.fetchval("SELECT count(*) FROM webhook_delivery_attempts") == 500
    finally:
        await conn.close()
    assert sum(counts) == 500, counts
    # Three workers shared the queue: each delivered some of it.
    assert all(count > 0 for count in counts), counts
