"""The delivery worker, in-process, against real receivers on real sockets.

Each test has a webhooks database of its own (PostgreSQL, and the SQLite default where one worker is
all it needs). Receivers listen on loopback addresses only; names resolve through an injected
resolver, never the machine's DNS.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.webhooks.models import DeliveryAttempt
from services.webhooks.sender import BODY_EXCERPT_BYTES
from shared.db import utcnow
from tests.infra import Servers
from tests.webhook_support import (
    HooksDb,
    Received,
    Receiver,
    answer,
    eventually,
    hooks_db,
    http_answer,
    running_worker,
)


@pytest.fixture(params=["postgresql", "sqlite"])
async def db(request, migrated: Servers, tmp_path) -> HooksDb:
    async with hooks_db(migrated, request.param, tmp_path) as found:
        yield found


@pytest.fixture
async def pg(migrated: Servers, tmp_path) -> HooksDb:
    async with hooks_db(migrated, "postgresql", tmp_path) as found:
        yield found


async def settled(db: HooksDb, deliveries, statuses=("succeeded", "failed", "cancelled"), timeout=60.0) -> None:
    async def check() -> bool:
        return all(s in statuses for s in await db.statuses(deliveries))

    await eventually(check, timeout)


async def attempt_log(db: HooksDb, delivery_id: str) -> list[DeliveryAttempt]:
    from sqlalchemy import select

    async with db.sessionmaker() as session:
        rows = await session.scalars(
            select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == delivery_id).order_by(DeliveryAttempt.id)
        )
        return list(rows)


async def test_deliveries_verify_with_the_standard_webhooks_library(db):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with Receiver() as receiver:
        previous = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="
        endpoint = await db.endpoint(
            receiver.url, previous_secret=previous, previous_secret_expires_at=utcnow() + timedelta(hours=1)
        )
        deliveries = await db.deliveries(endpoint, 3)
        async with running_worker(db, tracer_provider=provider):
            await settled(db, deliveries)
    assert await db.statuses(deliveries) == ["succeeded"] * 3
    assert len(receiver.received) == 3
    by_id = {d.webhook_id: d for d in deliveries}
    for request in receiver.received:
        headers = request.headers
        assert headers["content-type"] == "application/json"
        assert request.webhook_id in by_id
        # Both secrets of a rotation sign, and the specification's own library accepts each.
        assert len(headers["webhook-signature"].split(" ")) == 2
        for secret in (endpoint.secret, previous):
            payload = Webhook(secret).verify(request.body, headers)
            assert payload["type"] == "order.created"
            assert payload["data"]["status"] == "placed"
            assert payload["timestamp"].endswith("Z")
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo=").verify(request.body, headers)
        tampered = request.body.replace(b"placed", b"PLACED")
        with pytest.raises(WebhookVerificationError):
            Webhook(endpoint.secret).verify(tampered, headers)
    stored = await db.delivery(deliveries[0].id)
    assert (stored.attempts, stored.last_status_code, stored.lease_token) == (1, 204, None)
    log = await attempt_log(db, deliveries[0].id)
    assert [(a.status_code, a.error) for a in log] == [(204, None)]
    # One root span per attempt, a client span naming the webhook.
    spans = [s for s in exporter.get_finished_spans() if s.name == "webhook attempt"]
    assert len(spans) == 3
    assert all(s.parent is None and s.attributes["http.response.status_code"] == 204 for s in spans)
    assert {s.attributes["webhook.id"] for s in spans} == set(by_id)


async def test_an_expired_previous_secret_no_longer_signs(pg):
    async with Receiver() as receiver:
        endpoint = await pg.endpoint(
            receiver.url, previous_secret="whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=",
            previous_secret_expires_at=utcnow() - timedelta(seconds=1),
        )
        deliveries = await pg.deliveries(endpoint)
        async with running_worker(pg):
            await settled(pg, deliveries)
    [request] = receiver.received
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    Webhook(endpoint.secret).verify(request.body, request.headers)


async def test_failures_follow_the_schedule_to_the_dead_letter_and_replay_keeps_the_webhook_id(db):
    async with Receiver(answer(500, b"upstream exploded " + b"x" * 5000)) as receiver:
        endpoint = await db.endpoint(receiver.url)
        [delivery] = await db.deliveries(endpoint)
        async with running_worker(db, schedule=(0.05, 0.1)):
            await settled(db, [delivery])
        stored = await db.delivery(delivery.id)
        assert (stored.status, stored.attempts, stored.last_status_code, stored.next_attempt_at) == (
            "failed",
            3,
            500,
            None,
        )
        log = await attempt_log(db, delivery.id)
        assert [a.status_code for a in log] == [500, 500, 500]
        for entry in log:
            assert entry.error.startswith("HTTP 500: upstream exploded")
            assert len(entry.error) <= len("HTTP 500: ") + BODY_EXCERPT_BYTES
            assert entry.duration_ms >= 0
        # Scheduled 0.05 s and then 0.1 s (each within 10%) after the failures before them.
        gaps = [(b.at - a.at).total_seconds() for a, b in zip(log, log[1:], strict=False)]
        assert gaps[0] >= 0.045 and gaps[1] >= 0.09, gaps
        assert len({r.webhook_id for r in receiver.received}) == 1

        receiver.handler = answer(200)
        async with db.sessionmaker.begin() as session:
            from services.webhooks.delivery_repository import DeliveryRepository

            await DeliveryRepository(session).replay(await session.get(type(stored), delivery.id), utcnow())
        async with running_worker(db):
            await settled(db, [delivery], statuses=("succeeded",))
    assert len(receiver.received) == 4
    assert {r.webhook_id for r in receiver.received} == {delivery.webhook_id}
    replayed = await db.delivery(delivery.id)
    assert (replayed.attempts, replayed.round_attempts, replayed.replays) == (4, 1, 1)


async def test_retry_after_replaces_the_next_delay_capped_by_the_schedule(pg):
    async with Receiver(answer(429, b"slow down", {"retry-after": "2"})) as receiver:
        endpoint = await pg.endpoint(receiver.url)
        [asks_two] = await pg.deliveries(endpoint)
        async with running_worker(pg, schedule=(0.05, 600, 30)):
            await receiver.wait_for(1)
            await eventually(lambda: _attempted(pg, asks_two.id))
        stored = await pg.delivery(asks_two.id)
        wait = (stored.next_attempt_at - stored.last_attempt_at).total_seconds()
        assert stored.status == "pending"
        assert 2 <= wait < 2 + 30, wait  # 2 s from the answer, not the scheduled 0.05 s

    async with Receiver(answer(503, b"", {"retry-after": "86400"})) as receiver:
        endpoint = await pg.endpoint(receiver.url)
        [asks_a_day] = await pg.deliveries(endpoint)
        async with running_worker(pg, schedule=(0.05, 600, 30)):
            await receiver.wait_for(1)
            await eventually(lambda: _attempted(pg, asks_a_day.id))
        stored = await pg.delivery(asks_a_day.id)
        wait = (stored.next_attempt_at - stored.last_attempt_at).total_seconds()
        assert 600 <= wait < 600 + 30, wait  # capped by the longest delay

    async with Receiver(answer(500, b"", {"retry-after": "3600"})) as receiver:
        endpoint = await pg.endpoint(receiver.url)
        [ignored] = await pg.deliveries(endpoint)
        async with running_worker(pg, schedule=(5, 600)):
            await receiver.wait_for(1)
            await eventually(lambda: _attempted(pg, ignored.id))
        stored = await pg.delivery(ignored.id)
        wait = (stored.next_attempt_at - stored.last_attempt_at).total_seconds()
        assert 4.5 <= wait < 5.5 + 30, wait  # a 500's Retry-After is not a receiver's request to wait


async def _attempted(db: HooksDb, delivery_id: str) -> bool:
    stored = await db.delivery(delivery_id)
    return stored.attempts >= 1 and stored.lease_token is None


async def test_410_disables_the_endpoint_and_cancels_its_pending_deliveries(db):
    async with Receiver(answer(410, b"gone")) as gone, Receiver() as other:
        endpoint = await db.endpoint(gone.url)
        deliveries = await db.deliveries(endpoint, 5)
        bystander = await db.endpoint(other.url)
        [unaffected] = await db.deliveries(bystander)
        async with running_worker(db, endpoint_concurrency=1):
            await settled(db, [*deliveries, unaffected])
    assert len(gone.received) == 1
    assert await db.statuses(deliveries) == ["cancelled"] * 5
    assert (await db.delivery(unaffected.id)).status == "succeeded"
    async with db.sessionmaker() as session:
        assert (await session.get(type(endpoint), endpoint.id)).status == "disabled"
        assert (await session.get(type(bystander), bystander.id)).status == "active"


async def test_a_disabled_endpoints_leftover_pending_deliveries_are_cancelled_not_sent(db):
    async with Receiver() as receiver:
        endpoint = await db.endpoint(receiver.url)
        deliveries = await db.deliveries(endpoint, 2)
        async with db.sessionmaker.begin() as session:
            (await session.get(type(endpoint), endpoint.id)).status = "disabled"
        async with running_worker(db):
            await settled(db, deliveries)
    assert await db.statuses(deliveries) == ["cancelled"] * 2
    assert receiver.received == []


# Receivers that misbehave: each ends as a failed attempt with a reason, and the worker goes on.


async def never_answers(_: Received, __: asyncio.StreamWriter) -> bool:
    await asyncio.sleep(3600)
    return False


async def answers_too_late(_: Received, writer: asyncio.StreamWriter) -> bool:
    await asyncio.sleep(3)
    writer.write(http_answer(200))
    await writer.drain()
    return False


async def closes_at_once(_: Received, writer: asyncio.StreamWriter) -> bool:
    return False


async def closes_mid_answer(_: Received, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial")
    await writer.drain()
    return False


def endless_body(status: int):
    async def handle(_: Received, writer: asyncio.StreamWriter) -> bool:
        writer.write(f"HTTP/1.1 {status} X\r\ntransfer-encoding: chunked\r\n\r\n".encode())
        chunk = b"A" * 65536
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        for _ in range(100_000):  # 6.5 GB if anyone read it all
            writer.write(frame)
            await writer.drain()
        return False

    return handle


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (never_answers, "no answer within 1s"),
        (answers_too_late, "no answer within 1s"),
        (closes_at_once, "closed the connection without answering"),
        (closes_mid_answer, None),  # the status came, a 2xx: delivered
        (endless_body(500), "HTTP 500: AAAA"),
        (endless_body(200), None),
        (302, "HTTP 302 (redirects are not followed"),
        (307, "HTTP 307 (redirects are not followed"),
    ],
    ids=[
        "never-answers",
        "answers-too-late",
        "closes-at-once",
        "closes-mid-answer",
        "endless-500",
        "endless-200",
        "redirect-302",
        "redirect-307",
    ],
)
async def test_misbehaving_receivers(pg, handler, error):
    async with Receiver() as redirect_target, Receiver() as receiver:
        # A redirect points at a receiver that would answer 204: never followed, so it hears nothing.
        redirect = isinstance(handler, int)
        receiver.handler = answer(handler, b"", {"location": redirect_target.url}) if redirect else handler
        endpoint = await pg.endpoint(receiver.url)
        [delivery] = await pg.deliveries(endpoint)
        async with running_worker(pg, timeout=1.0, schedule=(3600,), stop_grace=0):
            await eventually(lambda: _attempted(pg, delivery.id))
    stored = await pg.delivery(delivery.id)
    [entry] = await attempt_log(pg, delivery.id)
    if error is None:
        assert stored.status == "succeeded", entry.error
        return
    assert stored.status == "pending"  # retried on the schedule
    assert error in entry.error, entry.error
    assert len(entry.error) <= 500
    assert redirect_target.received == []
