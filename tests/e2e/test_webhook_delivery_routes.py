"""A delivery and its replay, an endpoint's rate limit and the recovery of its failed deliveries, through
the gateway: plan gate, scopes, tenants. The shared stack runs no delivery worker (its endpoints point
at public addresses), so deliveries stay as they are here."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from tests.e2e.test_webhooks_flow import (
    PUBLIC_URL,
    Shop,
    all_pages,
    member_of,
    problem,
    signup,
    wait_for_deliveries,
)
from tests.infra import Servers


async def test_a_delivery_and_its_replay_through_the_gateway(gateway):
    shop = await Shop.open(gateway)
    admin = shop.caller
    created = await admin.request(
        "POST", "/v1/webhooks/endpoints", json={"url": PUBLIC_URL, "events": ["order.created"]}
    )
    assert created.status_code == 201, created.text
    endpoint = created.json()
    assert endpoint["status"] == "active"
    await shop.order()
    delivery = (await wait_for_deliveries(admin, {"e": endpoint}, {"e": 1}))["e"][0]
    assert delivery["webhook_id"].startswith("msg_")

    shown = await admin.request("GET", f"/v1/webhooks/deliveries/{delivery['id']}")
    assert shown.status_code == 200, shown.text
    assert (shown.json()["status"], shown.json()["attempt_log"]) == ("pending", [])
    replayed = await admin.request("POST", f"/v1/webhooks/deliveries/{delivery['id']}/replay")
    assert replayed.status_code == 202, replayed.text
    assert replayed.json()["webhook_id"] == delivery["webhook_id"]

    member = await member_of(admin)
    assert (await member.request("GET", f"/v1/webhooks/deliveries/{delivery['id']}")).status_code == 200
    refused = problem(await member.request("POST", f"/v1/webhooks/deliveries/{delivery['id']}/replay"), 403)
    assert refused["required_scope"] == "webhooks:write"

    stranger = await signup(gateway)
    for method, suffix in (("GET", ""), ("POST", "/replay")):
        path = f"/v1/webhooks/deliveries/{delivery['id']}{suffix}"
        problem(await stranger.request(method, path), 404, "WEBHOOK_DELIVERY_NOT_FOUND")
        problem(await admin.request(method, f"/v1/webhooks/deliveries/{uuid.uuid4()}{suffix}"), 404)
        problem(await admin.request(method, f"/v1/webhooks/deliveries/not a valid id{suffix}"), 422)
    free = await signup(gateway, plan="free")
    for method, suffix in (("GET", ""), ("POST", "/replay")):
        problem(await free.request(method, f"/v1/webhooks/deliveries/{delivery['id']}{suffix}"), 402)


async def test_an_endpoints_rate_limit_is_set_shown_changed_and_lifted(gateway):
    admin = await signup(gateway)
    created = await admin.request(
        "POST",
        "/v1/webhooks/endpoints",
        json={"url": PUBLIC_URL, "events": ["order.created"], "rate_limit_per_second": 10},
    )
    assert created.status_code == 201, created.text
    endpoint = created.json()
    assert endpoint["rate_limit_per_second"] == 10
    path = f"/v1/webhooks/endpoints/{endpoint['id']}"
    assert (await admin.request("GET", path)).json()["rate_limit_per_second"] == 10
    changed = await admin.request("PATCH", path, json={"rate_limit_per_second": 25})
    assert changed.json()["rate_limit_per_second"] == 25
    # A change of something else leaves it as it is; null lifts it.
    assert (await admin.request("PATCH", path, json={"events": ["order.cancelled"]})).json()[
        "rate_limit_per_second"
    ] == 25
    assert (await admin.request("PATCH", path, json={"rate_limit_per_second": None})).json()[
        "rate_limit_per_second"
    ] is None
    unlimited = await admin.request(
        "POST", "/v1/webhooks/endpoints", json={"url": PUBLIC_URL, "events": ["order.created"]}
    )
    assert unlimited.json()["rate_limit_per_second"] is None
    for wrong in (0, -1, 10_001, "fast", 2.5):
        refused = problem(await admin.request("PATCH", path, json={"rate_limit_per_second": wrong}), 422)
        assert [e["field"] for e in refused["errors"]] == ["rate_limit_per_second"], wrong


async def _seed_deliveries(
    migrated: Servers, endpoint: dict, tenant_id: str, rows: list[tuple[str, timedelta]]
) -> list[str]:
    """Deliveries of `endpoint` in the webhooks service's database, each (status, age); answers their ids."""
    ids = []
    conn = await asyncpg.connect(migrated.database_dsn("webhooks"))
    try:
        for status, age in rows:
            event_id, delivery_id = str(uuid.uuid4()), str(uuid.uuid4())
            made = datetime.now(UTC) - age
            await conn.execute(
                "INSERT INTO webhook_events (id, seq, tenant_id, type, data, occurred_at, received_at) "
                "VALUES ($1, 0, $2, 'order.created', '{}', $3, $3)",
                event_id,
                tenant_id,
                made,
            )
            await conn.execute(
                "INSERT INTO webhook_deliveries (id, tenant_id, event_id, endpoint_id, event_type, status, attempts,"
                " round_attempts, replays, next_attempt_at, last_status_code, created_at)"
                " VALUES ($1, $2, $3, $4, 'order.created', $5, 8, 8, 0, NULL, 500, $6)",
                delivery_id,
                tenant_id,
                event_id,
                endpoint["id"],
                status,
                made,
            )
            ids.append(delivery_id)
    finally:
        await conn.close()
    return ids


async def test_recover_sends_again_the_failed_deliveries_since_a_time(gateway, migrated):
    admin = await signup(gateway)
    created = await admin.request(
        "POST", "/v1/webhooks/endpoints", json={"url": PUBLIC_URL, "events": ["order.created"]}
    )
    endpoint = created.json()
    tenant_id = admin.tenant["id"]
    failed_long_ago, failed_lately, failed_now, succeeded, cancelled = await _seed_deliveries(
        migrated,
        endpoint,
        tenant_id,
        [
            ("failed", timedelta(hours=3)),
            ("failed", timedelta(minutes=30)),
            ("failed", timedelta(seconds=1)),
            ("succeeded", timedelta(minutes=10)),
            ("cancelled", timedelta(minutes=10)),
        ],
    )
    path = f"/v1/webhooks/endpoints/{endpoint['id']}/recover"
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()

    member = await member_of(admin)
    assert problem(await member.request("POST", path, json={"since": since}), 403)["required_scope"] == "webhooks:write"
    stranger = await signup(gateway)
    problem(await stranger.request("POST", path, json={"since": since}), 404, "WEBHOOK_ENDPOINT_NOT_FOUND")
    free = await signup(gateway, plan="free")
    problem(await free.request("POST", path, json={"since": since}), 402, "PLAN_UPGRADE_REQUIRED")
    for wrong in (
        {},
        {"since": "yesterday"},
        {"since": "2026-01-01T00:00:00"},
        {"since": "2999-01-01T00:00:00Z"},
        # Before year 1 once in UTC.
        {"since": "0001-01-01T00:00:00+14:00"},
    ):
        body = problem(await admin.request("POST", path, json=wrong), 422)
        assert "since" in [e["field"] for e in body["errors"]], wrong

    recovered = await admin.request("POST", path, json={"since": since})
    assert recovered.status_code == 202, recovered.text
    assert recovered.json() == {"requeued": 2}
    deliveries = {d["id"]: d for d in await all_pages(admin, f"/v1/webhooks/endpoints/{endpoint['id']}/deliveries")}
    statuses = {d: deliveries[d]["status"] for d in (failed_long_ago, failed_lately, failed_now, succeeded, cancelled)}
    assert statuses == {
        failed_long_ago: "failed",
        failed_lately: "pending",
        failed_now: "pending",
        succeeded: "succeeded",
        cancelled: "cancelled",
    }
    # Due at once, on a fresh schedule; what happened before stays counted.
    assert deliveries[failed_lately]["attempts"] == 8
    assert deliveries[failed_lately]["next_attempt_at"] is not None
    # Nothing failed since: nothing to send.
    assert (await admin.request("POST", path, json={"since": since})).json() == {"requeued": 0}

    # A disabled endpoint is enabled first.
    await admin.request("PATCH", f"/v1/webhooks/endpoints/{endpoint['id']}", json={"status": "disabled"})
    problem(await admin.request("POST", path, json={"since": since}), 409, "WEBHOOK_ENDPOINT_DISABLED")
