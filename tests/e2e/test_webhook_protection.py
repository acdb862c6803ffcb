"""Endpoints that protect their tenants and the service: an endpoint disabled for its tenant (a 410
from its receiver, or the failure rule) is announced to the tenant's other endpoints, and delivery
records are deleted after their retention period. The worker is a real process on PostgreSQL,
exporting its spans to the suite's OTLP receiver; receivers are real sockets in this process.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest
from standardwebhooks.webhooks import Webhook

from shared.db import utcnow
from tests.infra import Servers
from tests.webhook_support import HooksDb, Receiver, Workers, answer, eventually, hooks_db


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


async def _count(db: HooksDb, query: str, *args: object) -> int:
    return int(await db.fetchval(query, *args) or 0)


async def test_an_endpoint_disabled_for_its_tenant_is_announced_to_its_other_endpoints(pg, workers, otlp):
    """One endpoint's receiver answers 410 Gone, another's fails on every attempt (the failure rule
    here: 3 failed attempts in a row, for any time). Both are disabled, their pending deliveries
    cancelled, and the tenant's endpoint subscribed to `endpoint.disabled` gets one event for each,
    signed like any delivery, in the trace of the attempt that disabled it. The tenant's endpoint
    not subscribed to it, and another tenant's that is, get nothing."""
    service = f"webhooks-worker-{uuid.uuid4().hex[:8]}"
    async with (
        Receiver(answer(410, b"gone")) as gone_receiver,
        Receiver(answer(500, b"down")) as failing_receiver,
        Receiver() as watcher_receiver,
        Receiver() as bystander_receiver,
        Receiver() as stranger_receiver,
    ):
        tenant = str(uuid.uuid4())
        gone = await pg.endpoint(gone_receiver.url, tenant_id=tenant)
        failing = await pg.endpoint(failing_receiver.url, tenant_id=tenant)
        watcher = await pg.endpoint(watcher_receiver.url, tenant_id=tenant, events=["endpoint.disabled"])
        bystander = await pg.endpoint(bystander_receiver.url, tenant_id=tenant)
        stranger = await pg.endpoint(stranger_receiver.url, events=["endpoint.disabled"])
        owed = [*await pg.deliveries(gone, 2), *await pg.deliveries(failing, 2)]
        await workers.started(
            WEBHOOKS_FAILING_ENDPOINT_ATTEMPTS="3",
            WEBHOOKS_FAILING_ENDPOINT_SECONDS="0",
            WEBHOOKS_RETRY_SCHEDULE_SECONDS="0.2,0.2,0.2,0.2,0.2,0.2",
            OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint,
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_SERVICE_NAME=service,
        )

        async def settled() -> bool:
            # Both endpoints disabled, and every delivery made (the two announcements included) done.
            left = await _count(pg, "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
            off = await _count(pg, "SELECT count(*) FROM webhook_endpoints WHERE status = 'disabled'")
            return left == 0 and off == 2

        await eventually(settled, 120)
    assert await pg.statuses(owed) == ["cancelled"] * 4
    assert len(failing_receiver.received) >= 3
    assert len(gone_receiver.received) >= 1

    # One announcement per disabled endpoint, to the subscribed endpoint of the same tenant only.
    bodies = [Webhook(watcher.secret).verify(r.body, r.headers) for r in watcher_receiver.received]
    assert sorted((b["type"], b["data"]["endpoint_id"], b["data"]["reason"]) for b in bodies) == sorted(
        [("endpoint.disabled", gone.id, "gone"), ("endpoint.disabled", failing.id, "failing")]
    )
    assert bystander_receiver.received == stranger_receiver.received == []
    for endpoint, expected in ((watcher, 2), (bystander, 0), (stranger, 0)):
        assert await _count(pg, "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1", endpoint.id) == (
            expected
        )

    # Each announcement's attempt continues the trace of the attempt that disabled the endpoint,
    # and every attempt names its tenant under the contract's one name.
    def attempts() -> list:
        return [s for s in otlp.spans if s.service == service and s.name == "webhook attempt"]

    async def exported() -> bool:
        return sum(1 for s in attempts() if s.attributes["webhook.endpoint_id"] == watcher.id) == 2

    await eventually(exported, 30)
    spans = attempts()
    by_id = {s.span_id: s for s in spans}
    for announcement in (s for s in spans if s.attributes["webhook.endpoint_id"] == watcher.id):
        cause = by_id[announcement.parent_span_id]
        assert cause.trace_id == announcement.trace_id
        assert cause.attributes["webhook.endpoint_id"] in {gone.id, failing.id}
    assert {s.attributes["portico.tenant_id"] for s in spans} == {tenant}
    assert not any("tenant.id" in s.attributes for s in spans)


async def _age(db: HooksDb, delivery_ids: list[str], days: float, status: str | None = None) -> None:
    """Makes deliveries (and their events) as old as `days`, optionally in another status."""
    when = utcnow() - timedelta(days=days)
    await db.fetchval(
        "UPDATE webhook_deliveries SET created_at = $1, status = coalesce($3, status) WHERE id = ANY($2)",
        when,
        delivery_ids,
        status,
    )
    await db.fetchval(
        "UPDATE webhook_events SET received_at = $1, occurred_at = $1 "
        "WHERE id IN (SELECT event_id FROM webhook_deliveries WHERE id = ANY($2))",
        when,
        delivery_ids,
    )


async def test_the_retention_deletes_only_finished_deliveries_older_than_it(pg, workers):
    """Retention 30 days (the default), batches of 2: the finished deliveries made 40 days ago go,
    with their attempt logs and their events; the ones made 29 days ago stay, and so does a pending
    one made 40 days ago (it is still owed). Events no delivery refers to go once as old."""
    async with Receiver() as receiver:
        endpoint = await pg.endpoint(receiver.url)
        old = await pg.deliveries(endpoint, 3)
        recent = await pg.deliveries(endpoint, 2)
        [owed] = await pg.deliveries(endpoint)
        [orphaned_old, orphaned_recent] = await pg.deliveries(endpoint, 2)
        for status, delivery in zip(("succeeded", "failed", "cancelled"), old, strict=True):
            await _age(pg, [delivery.id], 40, status)
            await pg.fetchval(
                "INSERT INTO webhook_delivery_attempts (delivery_id, at, status_code, duration_ms) "
                "VALUES ($1, $2, 200, 5)",
                delivery.id,
                utcnow() - timedelta(days=40),
            )
        await _age(pg, [d.id for d in recent], 29, "succeeded")
        await _age(pg, [owed.id], 40)
        await pg.fetchval(
            "UPDATE webhook_deliveries SET next_attempt_at = $1 WHERE id = $2", utcnow() + timedelta(days=1), owed.id
        )
        # Events whose deliveries are gone already (an endpoint deleted): one old, one not.
        await _age(pg, [orphaned_old.id], 40)
        await _age(pg, [orphaned_recent.id], 1)
        events = {
            d.id: await pg.fetchval("SELECT event_id FROM webhook_deliveries WHERE id = $1", d.id)
            for d in (*old, *recent, owed, orphaned_old, orphaned_recent)
        }
        await pg.fetchval("DELETE FROM webhook_deliveries WHERE id = ANY($1)", [orphaned_old.id, orphaned_recent.id])
        # Made now, due now: the worker delivers while it cleans up.
        [fresh] = await pg.deliveries(endpoint)

        [port] = await workers.started(WEBHOOKS_RETENTION_BATCH_SIZE="2")

        async def cleaned() -> bool:
            left = await _count(pg, "SELECT count(*) FROM webhook_events WHERE id = $1", events[orphaned_old.id])
            return left == 0 and (await pg.statuses([fresh])) == ["succeeded"]

        await eventually(cleaned, 60)
    kept = await _count(pg, "SELECT count(*) FROM webhook_deliveries WHERE id = ANY($1)", [d.id for d in old])
    assert kept == 0
    assert (
        await _count(
            pg, "SELECT count(*) FROM webhook_delivery_attempts WHERE delivery_id = ANY($1)", [d.id for d in old]
        )
        == 0
    )
    assert await pg.statuses([*recent, owed, fresh]) == ["succeeded", "succeeded", "pending", "succeeded"]
    left = await pg.fetchval("SELECT array_agg(id) FROM webhook_events WHERE id = ANY($1)", list(events.values()))
    assert set(left or []) == {events[d.id] for d in (*recent, owed, orphaned_recent)}
    assert await workers.metric(port, 'portico_webhook_retention_deleted_total{kind="deliveries"}') == 3
    assert await workers.metric(port, 'portico_webhook_retention_deleted_total{kind="events"}') == 4
