"""The delivery worker, in-process, against real receivers on real sockets.

Each test has a webhooks database of its own (PostgreSQL, and the SQLite default where one worker is
all it needs). Receivers listen on loopback addresses only; names resolve through an injected
resolver, never the machine's DNS.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import timedelta
from typing import Any

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
    # The tenant under the contract's one name, as on every other process's spans.
    assert {s.attributes["portico.tenant_id"] for s in spans} == {endpoint.tenant_id}
    assert not any("tenant.id" in s.attributes for s in spans)


async def test_an_expired_previous_secret_no_longer_signs(pg):
    async with Receiver() as receiver:
        endpoint = await pg.endpoint(
            receiver.url,
            previous_secret="whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=",
            previous_secret_expires_at=utcnow() - timedelta(seconds=1),
        )
        deliveries = await pg.deliveries(endpoint)
        async with running_worker(pg):
            await settled(pg, deliveries)
    [request] = receiver.received
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    Webhook(endpoint.secret).verify(request.body, request.headers)


async def test_failures_follow_the_schedule_to_the_dead_letter_and_replay_keeps_the_webhook_id(db):
    pause = 0.05

    async def fails_after_a_pause(_: Received, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(pause)
        writer.write(http_answer(500, b"upstream exploded " + b"x" * 5000))
        await writer.drain()
        return True

    schedule, timeout = (0.05, 0.1), 5.0
    async with Receiver(fails_after_a_pause) as receiver:
        endpoint = await db.endpoint(receiver.url)
        [delivery] = await db.deliveries(endpoint)
        async with running_worker(db, schedule=schedule, timeout=timeout):
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
            # At least the receiver's own pause; at most the attempt's deadline.
            assert pause * 1000 <= entry.duration_ms <= timeout * 1000, entry.duration_ms
        # Scheduled 0.05 s and then 0.1 s (each within 10%) after the failed attempts before them
        # ended, as the worker measured them (so a loaded machine moves nothing here), and not
        # attempted before that.
        for (entry, following), delay in zip(itertools.pairwise(log), schedule, strict=True):
            assert entry.next_attempt_at is not None
            waited = (entry.next_attempt_at - entry.at).total_seconds() - entry.duration_ms / 1000
            # Half a millisecond either way: the duration is logged in whole milliseconds.
            assert delay * 0.9 - 0.0005 <= waited <= delay * 1.1 + 0.0005, (delay, waited)
            assert following.at >= entry.next_attempt_at
        assert log[-1].next_attempt_at is None  # the dead letter: nothing more was scheduled
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


async def attempted_once(db: HooksDb, receiver: Receiver, schedule: tuple[float, ...]) -> tuple[Any, float]:
    """A delivery to `receiver`, attempted once by a worker on `schedule`: the delivery as stored
    then, and the seconds from that attempt to the next one it was given."""
    endpoint = await db.endpoint(receiver.url)
    [delivery] = await db.deliveries(endpoint)
    async with running_worker(db, schedule=schedule):
        await receiver.wait_for(1)
        await eventually(lambda: _attempted(db, delivery.id))
    stored = await db.delivery(delivery.id)
    return stored, (stored.next_attempt_at - stored.last_attempt_at).total_seconds()


async def test_retry_after_replaces_the_next_delay_capped_by_the_schedule(pg):
    async with Receiver(answer(429, b"slow down", {"retry-after": "2"})) as receiver:
        stored, wait = await attempted_once(pg, receiver, (0.05, 600, 30))
        assert stored.status == "pending"
        assert 2 <= wait < 2 + 30, wait  # 2 s from the answer, not the scheduled 0.05 s

    async with Receiver(answer(503, b"", {"retry-after": "86400"})) as receiver:
        _, wait = await attempted_once(pg, receiver, (0.05, 600, 30))
        assert 600 <= wait < 600 + 30, wait  # capped by the longest delay

    async with Receiver(answer(500, b"", {"retry-after": "3600"})) as receiver:
        _, wait = await attempted_once(pg, receiver, (5, 600))
        assert 4.5 <= wait < 5.5 + 30, wait  # a 500's Retry-After is not a receiver's request to wait


@pytest.mark.parametrize(
    "retry_after",
    ["²", "Thu, 01 Jan 99999999999999999999 12:00:00 GMT"],
    ids=["superscript-digit", "year-too-large"],
)
async def test_a_retry_after_that_cannot_be_read_is_ignored_and_the_attempt_recorded(pg, retry_after):
    """Whatever a receiver puts in `Retry-After`, its attempt is counted and logged, and the next one
    follows the schedule; it is not left to a lapsing lease, attempted again without ever counting."""
    async with Receiver(answer(503, b"busy", {"retry-after": retry_after})) as receiver:
        stored, wait = await attempted_once(pg, receiver, (600, 600))
    assert (stored.status, stored.attempts, stored.last_status_code) == ("pending", 1, 503)
    assert 540 <= wait < 660 + 30, wait  # the scheduled 600 s (within 10%), from the answer
    [entry] = await attempt_log(pg, stored.id)
    assert (entry.status_code, entry.error) == (503, "HTTP 503: busy")


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


# SSRF at delivery time.


class Rebinding:
    """A name whose answers change from one lookup to the next: the DNS rebinding attack."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


async def test_a_name_rebound_between_check_and_connect_reaches_nothing_new(pg):
    """The name answers the checked address once, then another: the attempt connects to the one it
    checked. A second lookup for the connection would find the other address (or, with this
    resolver being the test's, no address at all) and the checked receiver would hear nothing."""
    async with Receiver(host="127.0.0.1") as checked, Receiver(host="127.0.0.2", port=checked.port) as rebound:
        resolver = Rebinding(["127.0.0.1"], ["127.0.0.2"])
        endpoint = await pg.endpoint(f"http://hooks.rebind.test:{checked.port}/hooks")
        [delivery] = await pg.deliveries(endpoint)
        async with running_worker(pg, resolver=resolver):
            await settled(pg, [delivery])
    assert (await pg.delivery(delivery.id)).status == "succeeded"
    assert rebound.received == []
    assert resolver.lookups == ["hooks.rebind.test"]
    [request] = checked.received
    assert request.headers["host"] == f"hooks.rebind.test:{checked.port}"  # the name, not the address


async def test_a_name_that_now_resolves_to_a_forbidden_address_is_refused_and_nothing_is_sent(pg):
    async with Receiver(host="127.0.0.2") as target:
        # First the metadata service, then the address a second lookup would have found.
        resolver = Rebinding(["169.254.169.254"], ["127.0.0.2"])
        endpoint = await pg.endpoint(f"http://hooks.rebind.test:{target.port}/hooks")
        [delivery] = await pg.deliveries(endpoint)
        async with running_worker(pg, resolver=resolver, schedule=(3600,)):
            await eventually(lambda: _attempted(pg, delivery.id))
    assert target.received == []
    [entry] = await attempt_log(pg, delivery.id)
    assert entry.status_code is None
    assert entry.error.startswith("refused: The host hooks.rebind.test resolves to 169.254.169.254"), entry.error
    assert resolver.lookups == ["hooks.rebind.test"]


async def test_private_addresses_are_refused_at_delivery_unless_allowed(pg):
    async with Receiver() as receiver:

        async def loopback(host: str, port: int) -> list[str]:
            return ["127.0.0.1"]

        endpoint = await pg.endpoint(f"http://hooks.example.test:{receiver.port}/hooks")
        literal = await pg.endpoint(receiver.url)
        deliveries = [*(await pg.deliveries(endpoint)), *(await pg.deliveries(literal))]
        async with running_worker(pg, resolver=loopback, allow_private=False, schedule=(3600,)):
            await eventually(lambda: _all_attempted(pg, deliveries))
        assert receiver.received == []
        for delivery in deliveries:
            [entry] = await attempt_log(pg, delivery.id)
            assert entry.error.startswith("refused:"), entry.error
            assert "loopback" in entry.error, entry.error


async def test_loopback_in_ipv4_compatible_and_translated_spellings_is_refused_at_delivery(pg):
    """The check registration runs (tests/unit/test_url_safety.py) runs before each attempt too:
    these spellings of loopback, once taken for public, are refused even where the demo setting
    opens loopback, as literals and as what a name resolves to."""
    async with Receiver() as receiver:

        async def translated(host: str, port: int) -> list[str]:
            return ["::ffff:0:7f00:1"]

        named = await pg.endpoint(f"http://hooks.example.test:{receiver.port}/hooks")
        compatible = await pg.endpoint(f"http://[::127.0.0.1]:{receiver.port}/hooks")
        deliveries = [*(await pg.deliveries(named)), *(await pg.deliveries(compatible))]
        async with running_worker(pg, resolver=translated, allow_private=True, schedule=(3600,)):
            await eventually(lambda: _all_attempted(pg, deliveries))
        assert receiver.received == []
    errors = [entry.error for d in deliveries for entry in await attempt_log(pg, d.id)]
    assert errors == [
        "refused: The host hooks.example.test resolves to ::ffff:0:7f00:1, a loopback address (the "
        "IPv4-translated form of 127.0.0.1, loopback, RFC 1122); webhooks only go to public internet addresses.",
        "refused: ::7f00:1 is a loopback address (the IPv4-compatible form of 127.0.0.1, loopback, RFC 1122); "
        "webhooks only go to public internet addresses.",
    ]


async def _all_attempted(db: HooksDb, deliveries) -> bool:
    return all([await _attempted(db, d.id) for d in deliveries])


# Concurrency, leases, stopping.


class Gate:
    """A receiver handler that holds every request until released, counting how many it holds."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.holding = 0
        self.most = 0

    async def __call__(self, _: Received, writer: asyncio.StreamWriter) -> bool:
        self.holding += 1
        self.most = max(self.most, self.holding)
        try:
            await self.open.wait()
        finally:
            self.holding -= 1
        writer.write(http_answer(204))
        await writer.drain()
        return True


async def test_a_slow_endpoint_holds_at_most_its_bound_across_workers(pg):
    gate = Gate()
    async with Receiver(gate) as slow, Receiver() as fast:
        slow_endpoint = await pg.endpoint(slow.url)
        held = await pg.deliveries(slow_endpoint, 12)
        fast_endpoint = await pg.endpoint(fast.url)
        quick = await pg.deliveries(fast_endpoint, 6)
        async with (
            running_worker(pg, endpoint_concurrency=2, concurrency=8) as first,
            running_worker(pg, endpoint_concurrency=2, concurrency=8) as second,
        ):
            # The fast endpoint is served while the slow one holds its two slots.
            await settled(pg, quick)
            await eventually(lambda: _equals(lambda: gate.holding, 2))
            # Two more claims by each worker, the second begun after the first ended: a wrong third
            # claim would have been made in one of them.
            marks = [(worker, worker.claims + 2) for worker in (first, second)]
            await eventually(lambda: _all_true(worker.claims >= mark for worker, mark in marks))
            assert gate.most == 2
            gate.open.set()
            await settled(pg, held)
    assert gate.most == 2
    assert await pg.statuses(held) == ["succeeded"] * 12
    assert len({r.webhook_id for r in slow.received}) == 12


async def test_a_busy_endpoint_is_claimed_again_as_its_attempts_end_not_at_the_next_poll(db):
    # Two endpoints with more due deliveries than their bound; the worker polls once an hour, so
    # every delivery past the first claim is made only if an attempt ending frees its endpoint's slot.
    async with Receiver() as first, Receiver() as second:
        deliveries = [
            *await db.deliveries(await db.endpoint(first.url), 10),
            *await db.deliveries(await db.endpoint(second.url), 10),
        ]
        async with running_worker(db, endpoint_concurrency=2, concurrency=8, poll_interval=3600):
            await settled(db, deliveries)
    assert await db.statuses(deliveries) == ["succeeded"] * 20
    assert len({r.webhook_id for r in first.received}) == 10
    assert len({r.webhook_id for r in second.received}) == 10


async def test_a_claim_names_the_endpoints_it_left_due_deliveries_of_at_their_limit(pg):
    from services.webhooks.delivery_repository import WorkerRepository

    async with Receiver() as receiver:
        busy = await pg.endpoint(receiver.url)
        quiet = await pg.endpoint(receiver.url)
        await pg.deliveries(busy, 3)
        await pg.deliveries(quiet, 1)

        async def claim(token: str):
            async with pg.sessionmaker.begin() as session:
                return await WorkerRepository(session).claim(
                    limit=10, endpoint_limit=2, lease_seconds=30, token=token, now=utcnow()
                )

        first = await claim("a")
        assert sorted(c.endpoint_id for c in first.claimed) == sorted([busy.id, busy.id, quiet.id])
        assert first.held_back.endpoints == {busy.id}
        # The busy endpoint is full now (its two leases), its third delivery still due.
        again = await claim("b")
        assert again.claimed == []
        assert again.held_back.endpoints == {busy.id}


async def _equals(value, expected) -> bool:
    return value() == expected


async def _all_true(checks) -> bool:
    return all(checks)


async def test_two_claims_at_once_take_different_rows_and_neither_waits_for_the_other(pg):
    """Two workers' claims in two transactions at the same time: the second passes over what the
    first holds (SKIP LOCKED) and takes other rows at once, instead of waiting or taking the same."""
    from services.webhooks.delivery_repository import WorkerRepository

    async with Receiver() as receiver:
        # Three tenants, oldest first; a claim of two slots serves the first two.
        endpoints = [await pg.endpoint(receiver.url) for _ in range(3)]
        for endpoint in endpoints:
            await pg.deliveries(endpoint, 4)

        async def claim(session, token: str, limit: int):
            return await WorkerRepository(session).claim(
                limit=limit, endpoint_limit=10, lease_seconds=30, token=token, now=utcnow()
            )

        async with pg.sessionmaker() as one, pg.sessionmaker() as other, one.begin():
            first = await claim(one, "first", 2)
            # The first claim's transaction is still open: its rows are locked, its leases unseen.
            async with other.begin():
                second = await asyncio.wait_for(claim(other, "second", 10), 30)
    firsts = {c.delivery_id for c in first.claimed}
    seconds = {c.delivery_id for c in second.claimed}
    assert len(firsts) == 2
    assert {c.endpoint_id for c in first.claimed} == {endpoints[0].id, endpoints[1].id}
    assert len(seconds) == 4
    assert {c.endpoint_id for c in second.claimed} == {endpoints[2].id}
    assert not firsts & seconds
    leases = {d: (await pg.delivery(d)).lease_token for d in firsts | seconds}
    assert {leases[d] for d in firsts} == {"first"}
    assert {leases[d] for d in seconds} == {"second"}


async def test_a_lapsed_lease_is_claimed_again_and_an_unexpired_one_is_not(pg):
    from services.webhooks.delivery_repository import WorkerRepository

    async with Receiver() as receiver:
        endpoint = await pg.endpoint(receiver.url)
        lapsed, held = await pg.deliveries(endpoint, 2)
        now = utcnow()
        async with pg.sessionmaker.begin() as session:
            for delivery, expires in ((lapsed, now - timedelta(seconds=1)), (held, now + timedelta(hours=1))):
                row = await session.get(type(delivery), delivery.id)
                row.lease_token, row.lease_expires_at = "dead-worker:1", expires
        async with running_worker(pg):
            await settled(pg, [lapsed])
            # A delivery made now is sent only by a claim that starts after it: that claim would have
            # taken the leased one too, were it claimable.
            [marker] = await pg.deliveries(endpoint)
            await settled(pg, [marker])
        assert (await pg.delivery(held.id)).status == "pending"
        assert [r.webhook_id for r in receiver.received] == [lapsed.webhook_id, marker.webhook_id]
        # A claim never takes a row another claim holds (SKIP LOCKED), nor a leased one.
        async with pg.sessionmaker.begin() as session:
            result = await WorkerRepository(session).claim(
                limit=10, endpoint_limit=10, lease_seconds=30, token="t", now=utcnow()
            )
        assert result.claimed == []


async def test_stopping_finishes_what_it_can_and_gives_back_the_rest(db):
    gate = Gate()
    async with Receiver(gate) as slow, Receiver() as fast:
        stuck = await db.deliveries(await db.endpoint(slow.url), 2)
        done = await db.deliveries(await db.endpoint(fast.url), 2)
        async with running_worker(db, stop_grace=0.5) as worker:
            await settled(db, done)
            await eventually(lambda: _equals(lambda: gate.holding, 2))
        assert not worker.running
    for delivery in stuck:
        stored = await db.delivery(delivery.id)
        # Given back at once (no lease left to lapse), no attempt counted: it is due again.
        assert (stored.status, stored.lease_token, stored.lease_expires_at, stored.attempts) == (
            "pending",
            None,
            None,
            0,
        )
    assert await db.statuses(done) == ["succeeded"] * 2
    async with Receiver() as again:
        async with db.sessionmaker.begin() as session:
            from sqlalchemy import update

            from services.webhooks.models import Endpoint

            await session.execute(update(Endpoint).where(Endpoint.url == slow.url).values(url=again.url))
        async with running_worker(db):
            await settled(db, stuck)
    assert {r.webhook_id for r in again.received} == {d.webhook_id for d in stuck}


async def test_metrics_count_outcomes_and_measure_the_queue(pg):
    async with Receiver() as ok, Receiver(answer(500)) as failing:
        succeeded = await pg.deliveries(await pg.endpoint(ok.url), 2)
        dead = await pg.deliveries(await pg.endpoint(failing.url), 1)
        async with running_worker(pg, schedule=(0.01,)) as worker:
            await settled(pg, [*succeeded, *dead])
        # Stopped now: a delivery that came due 90 s ago waits, and the gauges say so.
        [waiting] = await pg.deliveries(await pg.endpoint(ok.url))
        async with pg.sessionmaker.begin() as session:
            (await session.get(type(waiting), waiting.id)).next_attempt_at = utcnow() - timedelta(seconds=90)
        await worker.update_stats()
    text = generate_latest(worker.metrics.registry).decode()
    assert 'portico_webhook_deliveries_total{outcome="succeeded"} 2.0' in text
    assert 'portico_webhook_deliveries_total{outcome="failed_attempt"} 1.0' in text
    assert 'portico_webhook_deliveries_total{outcome="dead_lettered"} 1.0' in text
    assert 'portico_webhook_deliveries_total{outcome="cancelled"} 0.0' in text
    assert "portico_webhook_attempt_duration_seconds_count 4.0" in text
    assert "portico_webhook_queue_depth 1.0" in text
    age = float(text.split("\nportico_webhook_oldest_pending_age_seconds ")[1].split()[0])
    assert 90 <= age < 90 + 60, age


# The API: a delivery with its attempt log, replays, and disabling.


async def test_the_api_shows_a_delivery_with_its_attempt_log_and_replays_it(pg, migrated, signer):
    from services.webhooks.app import create_app
    from services.webhooks.settings import WebhooksSettings
    from shared.identity_token import Identity
    from tests.conftest import app_client, internal_headers, settings_kwargs

    settings = WebhooksSettings(
        **{**settings_kwargs(migrated, "webhooks"), "database_url": pg.url}, relay_enabled=False
    )
    async with Receiver(answer(500, b"nope")) as receiver:
        endpoint = await pg.endpoint(receiver.url)
        [delivery] = await pg.deliveries(endpoint)
        async with running_worker(pg, schedule=(0.01,)):
            await settled(pg, [delivery])

        def headers(tenant_id: str, *scopes: str) -> dict[str, str]:
            identity = Identity(subject="u", tenant_id=tenant_id, scopes=frozenset(scopes), plan="pro")
            return internal_headers(signer, "webhooks", identity)

        owner = headers(endpoint.tenant_id, "webhooks:read", "webhooks:write")
        reader = headers(endpoint.tenant_id, "webhooks:read")
        stranger = headers("another-tenant", "webhooks:read", "webhooks:write")
        async for client in app_client(create_app(settings)):
            shown = await client.get(f"/deliveries/{delivery.id}", headers=reader)
            assert shown.status_code == 200, shown.text
            body = shown.json()
            assert body["webhook_id"] == delivery.webhook_id
            assert (body["status"], body["attempts"], body["last_status_code"]) == ("failed", 2, 500)
            assert [(a["status_code"], a["error"]) for a in body["attempt_log"]] == [(500, "HTTP 500: nope")] * 2
            assert set(body["attempt_log"][0]) == {"at", "status_code", "duration_ms", "error"}
            listed = await client.get(f"/endpoints/{endpoint.id}/deliveries", headers=reader)
            assert listed.json()["items"][0]["webhook_id"] == delivery.webhook_id

            for who in (stranger,):
                for method, path in (("GET", ""), ("POST", "/replay")):
                    missing = await client.request(method, f"/deliveries/{delivery.id}{path}", headers=who)
                    assert missing.status_code == 404
                    assert missing.json()["error_code"] == "WEBHOOK_DELIVERY_NOT_FOUND"
            refused = await client.post(f"/deliveries/{delivery.id}/replay", headers=reader)
            assert refused.status_code == 403

            receiver.handler = answer(204)
            replayed = await client.post(f"/deliveries/{delivery.id}/replay", headers=owner)
            assert replayed.status_code == 202, replayed.text
            assert (replayed.json()["status"], replayed.json()["webhook_id"]) == ("pending", delivery.webhook_id)
            async with running_worker(pg):
                await settled(pg, [delivery], statuses=("succeeded",))

            # Disabling cancels what is pending; a disabled endpoint's deliveries are not replayed.
            [later] = await pg.deliveries(endpoint)
            off = await client.patch(f"/endpoints/{endpoint.id}", json={"status": "disabled"}, headers=owner)
            assert off.json()["status"] == "disabled"
            assert (await pg.delivery(later.id)).status == "cancelled"
            conflict = await client.post(f"/deliveries/{later.id}/replay", headers=owner)
            assert conflict.status_code == 409
            assert conflict.json()["error_code"] == "WEBHOOK_ENDPOINT_DISABLED"
            on = await client.patch(f"/endpoints/{endpoint.id}", json={"status": "active"}, headers=owner)
            assert on.json()["status"] == "active"
            assert (await client.post(f"/deliveries/{later.id}/replay", headers=owner)).status_code == 202
            async with running_worker(pg):
                await settled(pg, [later], statuses=("succeeded",))
    assert [r.webhook_id for r in receiver.received] == [delivery.webhook_id] * 3 + [later.webhook_id]


async def test_a_slow_answer_within_the_timeout_is_a_success_and_its_time_is_logged(pg):
    async def slow(_: Received, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(1)
        writer.write(http_answer(200))
        await writer.drain()
        return True

    async with Receiver(slow) as receiver:
        [delivery] = await pg.deliveries(await pg.endpoint(receiver.url))
        started = time.monotonic()
        async with running_worker(pg, timeout=30):
            await settled(pg, [delivery])
        waited = time.monotonic() - started
    assert (await pg.delivery(delivery.id)).status == "succeeded"
    [entry] = await attempt_log(pg, delivery.id)
    assert (entry.status_code, entry.error) == (200, None)
    # At least the receiver's pause, and no more than the test waited for the whole delivery.
    assert 1000 <= entry.duration_ms <= waited * 1000, (entry.duration_ms, waited)


# Retention.


async def test_the_retention_deletes_in_short_batches_only_finished_deliveries_older_than_it(db):
    from sqlalchemy import event, select, update

    from services.webhooks.models import Delivery, Event

    async with Receiver() as receiver:
        endpoint = await db.endpoint(receiver.url)
        async with running_worker(db, retention_batch=2) as worker:
            pass  # stopped: the purge below is the only one
        old, recent, owed = (
            await db.deliveries(endpoint, 5),
            await db.deliveries(endpoint, 2),
            await db.deliveries(endpoint),
        )
        now = utcnow()
        async with db.sessionmaker.begin() as session:
            for rows, age, status in ((old, 31, "succeeded"), (recent, 29, "failed"), (owed, 31, "pending")):
                await session.execute(
                    update(Delivery)
                    .where(Delivery.id.in_([d.id for d in rows]))
                    .values(status=status, created_at=now - timedelta(days=age))
                )
                await session.execute(
                    update(Event)
                    .where(Event.id.in_([d.event_id for d in rows]))
                    .values(received_at=now - timedelta(days=age))
                )
        deletes: list[str] = []

        def note(conn, cursor, statement: str, *_: object) -> None:
            if statement.lstrip().upper().startswith("DELETE FROM WEBHOOK_DELIVERIES"):
                deletes.append(statement)

        event.listen(db.engine.sync_engine, "before_cursor_execute", note)
        try:
            deleted = await worker.purge()
        finally:
            event.remove(db.engine.sync_engine, "before_cursor_execute", note)
    # Five deliveries and their five events, the deliveries two at a time (a transaction each).
    assert deleted == (5, 5)
    assert len(deletes) == 3
    async with db.sessionmaker() as session:
        left = set(await session.scalars(select(Delivery.id)))
    assert left == {d.id for d in (*recent, *owed)}
