"""The webhooks service's latest migration up and down on PostgreSQL and SQLite, with rows in its
tables: each keeps what the rows said, and head is exactly what the models say."""

from __future__ import annotations

import asyncio

from alembic import command

from shared.migrations import alembic_config, upgrade
from tests.integration.test_migrations import columns, differences, query
from tests.webhook_support import WEBHOOKS_DIR

ROWS = (
    "INSERT INTO webhook_endpoints (id, tenant_id, url, events, status, secret, created_at, updated_at) VALUES "
    "('ep', 't', 'https://1.1.1.1/', '[]', 'active', 's', '2026-01-01 00:00:00+00', '2026-01-01 00:00:00+00')",
    "INSERT INTO webhook_events (id, seq, tenant_id, type, data, occurred_at, received_at) VALUES "
    "('ev', 1, 't', 'order.created', '{}', '2026-01-01 00:00:00+00', '2026-01-01 00:00:00+00')",
    "INSERT INTO webhook_deliveries (id, tenant_id, event_id, endpoint_id, event_type, status, attempts, "
    "round_attempts, replays, created_at) VALUES ('d', 't', 'ev', 'ep', 'order.created', 'failed', 1, 1, 0, "
    "'2026-01-01 00:00:00+00')",
    "INSERT INTO webhook_delivery_attempts (delivery_id, at, status_code, duration_ms) VALUES "
    "('d', '2026-01-01 00:00:00+00', 500, 12)",
)


async def test_0004_fairness_and_protection_up_and_down_keeps_the_rows(empty_url):
    await asyncio.to_thread(upgrade, WEBHOOKS_DIR, empty_url, "0003_event_trace")
    for row in ROWS:
        await query(empty_url, row)
    await asyncio.to_thread(upgrade, WEBHOOKS_DIR, empty_url, "0004_fairness_and_protection")
    # No limit, a clean failure record, nothing scheduled after the logged attempt.
    assert await query(
        empty_url, "SELECT rate_limit_per_second, consecutive_failures, failing_since FROM webhook_endpoints"
    ) == [(None, 0, None)]
    assert await query(empty_url, "SELECT status_code, next_attempt_at FROM webhook_delivery_attempts") == [(500, None)]
    assert await differences(empty_url) == []
    await asyncio.to_thread(command.downgrade, alembic_config(WEBHOOKS_DIR, empty_url), "0003_event_trace")
    assert "rate_limit_per_second" not in await columns(empty_url, "webhook_endpoints")
    assert "next_attempt_at" not in await columns(empty_url, "webhook_delivery_attempts")
    assert await query(empty_url, "SELECT id, status FROM webhook_deliveries") == [("d", "failed")]
    assert await query(empty_url, "SELECT count(*) FROM webhook_delivery_attempts") == [(1,)]
    await asyncio.to_thread(upgrade, WEBHOOKS_DIR, empty_url)
    assert await differences(empty_url) == []
