"""The time of one delivery claim on PostgreSQL with a large backlog: `--due` due deliveries over
`--tenants` tenants (one endpoint each), a claim of 32 slots with the default bounds, rolled back
after each run so every run sees the same backlog.

    .venv/bin/python -m bench.webhook_claim --due 100000 --tenants 10 --runs 5

Needs a PostgreSQL it may create a database on (TEST_DATABASE_URL, default the local one).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from bench.common import migrated_database
from services.webhooks.delivery_repository import WorkerRepository
from shared.db import utcnow

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def run(args: argparse.Namespace) -> None:
    async with migrated_database(os.environ.get("TEST_DATABASE_URL", DEFAULT_DSN), "webhooks") as url:
        engine = create_async_engine(url)
        params = {"tenants": args.tenants, "due": args.due}
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO webhook_endpoints (id, tenant_id, url, events, status, secret, created_at, "
                    "updated_at, consecutive_failures) SELECT 'e' || g, 't' || g, 'http://127.0.0.1:9/hooks', "
                    "'[]', 'active', 's', now(), now(), 0 FROM generate_series(1, :tenants) g"
                ),
                params,
            )
            await conn.execute(
                text(
                    "INSERT INTO webhook_events (id, seq, tenant_id, type, data, occurred_at, received_at) "
                    "SELECT 'v' || g, g, 't' || (g % :tenants + 1), 'order.created', '{}', now(), now() "
                    "FROM generate_series(1, :due) g"
                ),
                params,
            )
            await conn.execute(
                text(
                    "INSERT INTO webhook_deliveries (id, tenant_id, event_id, endpoint_id, event_type, status, "
                    "attempts, round_attempts, replays, next_attempt_at, created_at) SELECT 'd' || g, "
                    "'t' || (g % :tenants + 1), 'v' || g, 'e' || (g % :tenants + 1), 'order.created', 'pending', "
                    "0, 0, 0, now() - make_interval(secs => g / 1000.0), now() FROM generate_series(1, :due) g"
                ),
                params,
            )
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE"))
        sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        times = []
        claimed = 0
        for run_number in range(args.runs):
            started = time.perf_counter()
            async with sessionmaker() as session, session.begin():
                result = await WorkerRepository(session).claim(
                    limit=32,
                    endpoint_limit=4,
                    lease_seconds=60,
                    token=f"bench-{run_number}",
                    now=utcnow(),
                    tenant_limit=8,
                    host_limit=4,
                )
                claimed = len(result.claimed)
                await session.rollback()
            times.append((time.perf_counter() - started) * 1000)
        await engine.dispose()
    print(
        f"{args.due} due over {args.tenants} tenants: {claimed} claimed; claim ms "
        + ", ".join(f"{t:.1f}" for t in times)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--due", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
