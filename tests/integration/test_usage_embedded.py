"""Usage and quotas in the embedded gateway (no Redis: the in-process stores) in front of the real
services: the same counts, quota, headers and threshold events as with Redis."""

from __future__ import annotations

import json
import uuid

import asyncpg

from gateway.edge.periods import current_month
from tests.edge_support import bearer, gateway_settings, in_process_gateway
from tests.faults import eventually
from tests.infra import Servers


async def test_an_embedded_gateway_meters_enforces_and_announces(stack, migrated: Servers):
    settings = gateway_settings(stack, quota_pro=5)
    assert settings.redis_url is None
    tenant_id = str(uuid.uuid4())
    auth = bearer("pro", tenant_id=tenant_id)
    async with in_process_gateway(settings) as gateway:
        codes = [(await gateway.get("/v1/nothing-here", headers=auth)).status_code for _ in range(7)]
        assert codes == [404] * 5 + [429] * 2
        refused = await gateway.get("/v1/nothing-here", headers=auth)
        assert refused.json()["error_code"] == "QUOTA_EXCEEDED"
        assert f'"monthly";q=5;w={current_month().seconds}' in refused.headers["ratelimit-policy"]

        usage = (await gateway.get("/v1/usage", headers=auth)).json()
        assert usage["quota"] == {
            "period_start": current_month().start.isoformat().replace("+00:00", "Z"),
            "period_end": current_month().end.isoformat().replace("+00:00", "Z"),
            "limit": 5,
            "used": 5,
        }
        # Every answer counted, the refused ones too; the 429s are answered by the edge.
        assert usage["totals"] == {"requests": 8, "by_status_class": {"2xx": 0, "4xx": 8, "5xx": 0}}
        assert [(i["route"], i["status_class"], i["requests"]) for i in usage["items"]] == [("unmatched", "4xx", 8)]

        connection = await asyncpg.connect(migrated.database_dsn("orders"))
        try:

            async def announced() -> list[asyncpg.Record]:
                return list(
                    await connection.fetch("SELECT type, data FROM outbox WHERE tenant_id = $1 ORDER BY seq", tenant_id)
                )

            async def both_announced() -> bool:
                return len(await announced()) >= 2

            # 80% of 5 is the 4th request, 100% the 5th: each once.
            await eventually(both_announced, timeout=30, interval=0.1)
            rows = await announced()
        finally:
            await connection.close()
    assert [row["type"] for row in rows] == ["quota.threshold_reached"] * 2
    thresholds = [json.loads(row["data"]) if isinstance(row["data"], str) else row["data"] for row in rows]
    assert [(t["threshold"], t["used"], t["limit"]) for t in thresholds] == [(80, 4, 5), (100, 5, 5)]
