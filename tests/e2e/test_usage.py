"""Usage and monthly quotas with every process real (PostgreSQL, Redis): metering exact over two gateway
processes while one is killed, a quota reached exactly at its limit across gateways, each threshold's
event once in the feed, the operator's per-tenant quota, and `GET /v1/usage`'s scope and validation."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.edge.periods import current_month
from scripts.devstack import Stack, free_port
from shared.contract import ALL_SCOPES, USAGE_READ
from tests.conftest import ROOT
from tests.e2e.test_realtime import reading, until
from tests.edge_support import PASSWORD, bearer, login, signup
from tests.faults import eventually
from tests.infra import Servers


@contextlib.contextmanager
def gateways(stack: Stack, count: int, env: dict[str, str]) -> Iterator[list[Stack]]:
    """`count` gateway processes of the test's own in front of the stack's services, on its Redis."""
    started: list[Stack] = []
    try:
        for _ in range(count):
            own = Stack(
                ports={**stack.ports, "gateway": free_port()},
                env=stack.env,
                env_for={"gateway": env},
                log_dir=stack.log_dir / f"usage-gateway-{len(started)}" if stack.log_dir else None,
                cwd=ROOT,
            )
            own.start_one("gateway")
            started.append(own)
        for own in started:
            own.wait_ready(60)
        yield started
    finally:
        for own in started:
            own.stop()


def total(usage: dict, route: str, status_class: str) -> int:
    return sum(i["requests"] for i in usage["items"] if i["route"] == route and i["status_class"] == status_class)


async def usage_of(client: httpx.AsyncClient, auth: dict[str, str], **params: str) -> dict:
    answer = await client.get("/v1/usage", params=params, headers=auth)
    assert answer.status_code == 200, answer.text
    return answer.json()


def counted(usage: dict) -> int:
    """The answers counted but those to the usage route itself (the tests' own reads of it)."""
    return int(usage["totals"]["requests"]) - sum(i["requests"] for i in usage["items"] if i["route"] == "/v1/usage")


async def usage_once_written(client: httpx.AsyncClient, auth: dict[str, str], requests: int) -> dict:
    """The usage once `requests` answers (besides the usage route's) are in it: a gateway writes its
    counts every GATEWAY_USAGE_FLUSH_SECONDS (0.1 s). Read again five intervals later, so that a count
    still to come, one too many, would be in it."""

    async def written() -> bool:
        return counted(await usage_of(client, auth)) >= requests

    await eventually(written)
    await asyncio.sleep(0.5)
    return await usage_of(client, auth)


async def test_every_answer_is_counted_once_while_a_gateway_is_killed(stack, gateway):
    """1,000 requests over two gateway processes, one killed with SIGKILL halfway. The survivor's answers
    are all counted, and so is every answer the killed one gave before its last write to Redis that the
    test saw; the only answers that may be missing are the killed process's since that write (the
    documented bound), and none is counted twice. A gateway that is stopped writes what it counted.

    The usage is read through a third gateway with the same quota: the 1,000 requests fill the pro
    plan's default quota (1,000 a minute, counted in Redis for every gateway), past which a read
    through the stack's own gateway would be refused."""
    tenant = await signup(gateway, plan="pro")
    member_routes = itertools.cycle(["/v1/users/me", "/v1/nothing-here"])
    env = {"GATEWAY_RATE_LIMIT_PRO": "100000/60s"}
    answered = {"/v1/users/me": 0, "/v1/nothing-here": 0}
    by_victim = 0
    lost_in_flight = 0
    with gateways(stack, 1, env) as (reading_gateway,):
        async with httpx.AsyncClient(base_url=reading_gateway.url(), timeout=30) as reader:
            with gateways(stack, 2, env) as (one, two):
                victim = one.procs["gateway"]
                async with httpx.AsyncClient(timeout=30) as client:
                    sent = 0
                    lock = asyncio.Lock()
                    # The first 300 answers, then a pause until Redis has every one of them: what the killed
                    # process counted up to there is written, and must stay.
                    first_written = asyncio.Event()

                    async def worker() -> None:
                        nonlocal sent, lost_in_flight, by_victim
                        while True:
                            async with lock:
                                if sent >= 1000:
                                    return
                                sent += 1
                                number = sent
                                path = next(member_routes)
                            if number > 300:
                                await first_written.wait()
                            to_victim = bool(number % 2) and victim.poll() is None
                            if number == 650:
                                victim.send_signal(signal.SIGKILL)
                            try:
                                response = await client.get(
                                    (one if to_victim else two).url() + path, headers=tenant.auth
                                )
                            except httpx.TransportError:
                                lost_in_flight += 1  # no answer: the process died under it
                                continue
                            assert response.status_code == (200 if path == "/v1/users/me" else 404), response.text
                            answered[path] += 1
                            by_victim += int(to_victim and number > 300)

                    async def mark() -> None:
                        await eventually(lambda: _answered(answered, 300))
                        await usage_once_written(reader, tenant.auth, 300)
                        first_written.set()

                    await asyncio.gather(mark(), *(worker() for _ in range(16)))
                    victim.wait()
                assert sum(answered.values()) + lost_in_flight == 1000
                # The survivor stops as a redeploy stops it (SIGTERM): it writes what it counted before it exits.
            usage = await usage_once_written(reader, tenant.auth, sum(answered.values()) - by_victim)
            me, unmatched = total(usage, "/v1/users/me", "2xx"), total(usage, "unmatched", "4xx")
            received = sum(answered.values())
            # None counted twice: at most every answer, and the requests the killed process had in flight.
            assert me + unmatched <= received + lost_in_flight, (me, unmatched, answered, lost_in_flight)
            # None lost but the killed process's answers after the first 300 (its unwritten tail is in there).
            assert me + unmatched >= received - by_victim, (me, unmatched, received, by_victim)
            reads = total(usage, "/v1/usage", "2xx")
            assert usage["totals"]["requests"] == me + unmatched + reads
            assert usage["totals"]["by_status_class"] == {"2xx": me + reads, "4xx": unmatched, "5xx": 0}
            # The monthly quota counts each admitted request once, on admission, in the rate limit's own script:
            # every answer, and at most the killed process's requests in flight (the usage calls are outside it).
            used = usage["quota"]["used"]
            assert received <= used <= received + lost_in_flight, (used, received, lost_in_flight)
            assert usage["quota"]["limit"] == 10_000_000


async def test_a_gateway_that_stops_writes_what_it_counted(stack, gateway):
    """A gateway that writes its counts only once a minute, stopped as a redeploy stops it (SIGTERM):
    its answers are all in the usage, once."""
    tenant = await signup(gateway, plan="pro")
    with gateways(stack, 1, {"GATEWAY_USAGE_FLUSH_SECONDS": "60"}) as (own,):
        async with httpx.AsyncClient(base_url=own.url(), timeout=30) as client:
            for _ in range(25):
                assert (await client.get("/v1/users/me", headers=tenant.auth)).status_code == 200
        assert total(await usage_of(gateway, tenant.auth), "/v1/users/me", "2xx") == 0  # not written yet
    usage = await usage_once_written(gateway, tenant.auth, 25)
    assert total(usage, "/v1/users/me", "2xx") == 25


async def _answered(answered: dict[str, int], n: int) -> bool:
    return sum(answered.values()) >= n


def redis_client(infra: Servers) -> redis.Redis:
    return redis.Redis.from_url(infra.redis_url)


async def outbox_events(infra: Servers, tenant_id: str) -> list[dict]:
    engine = create_async_engine(infra.database_url("orders"))
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text("SELECT id, type, data FROM outbox WHERE tenant_id = :tenant ORDER BY seq"), {"tenant": tenant_id}
            )
            return [{"id": r.id, "type": r.type, "data": r.data} for r in rows]
    finally:
        await engine.dispose()


async def test_a_quota_is_reached_exactly_across_gateways_and_each_threshold_is_announced_once(stack, migrated):
    """Two gateway processes, a monthly quota of 50: of 80 concurrent requests exactly 50 are admitted,
    the rest answered 429 QUOTA_EXCEEDED until the next month, and the 80% and 100% events reach the
    tenant's event stream once each."""
    tenant_id = str(uuid.uuid4())
    auth = bearer("pro", tenant_id=tenant_id)
    with gateways(stack, 2, {"GATEWAY_QUOTA_PRO": "50"}) as (one, two):
        async with httpx.AsyncClient(timeout=30) as client:
            urls = [one.url(), two.url()] * 40
            answers = await asyncio.gather(*(client.get(url + "/v1/nothing-here", headers=auth) for url in urls))
            codes = [a.status_code for a in answers]
            assert codes.count(404) == 50, codes
            assert codes.count(429) == 30, codes
            month = current_month()
            refused = next(a for a in answers if a.status_code == 429)
            problem = refused.json()
            assert problem["error_code"] == "QUOTA_EXCEEDED"
            assert problem["limit"] == 50
            assert problem["period_end"] == month.end.isoformat().replace("+00:00", "Z")
            left = month.end.timestamp() - time.time()
            assert left - 5 <= int(refused.headers["retry-after"]) <= left + 5
            assert f'"monthly";q=50;w={month.seconds}' in refused.headers["ratelimit-policy"]
            assert '"monthly";r=0;t=' in refused.headers["ratelimit"]
            # Another tenant on the same plan is not affected.
            assert (await client.get(one.url() + "/v1/nothing-here", headers=bearer("pro"))).status_code == 404

            key = f"{migrated.redis_prefix}rl:{{t:{tenant_id}}}:monthly:{month.label}"
            marks = redis_client(migrated)
            try:
                # Published: each gateway stops announcing once the feed holds the event.
                await until(lambda: marks.hmget(key, "s80", "s100") == [b"1", b"1"], "both thresholds published")
                assert marks.hmget(key, "c", "e80", "e100") == [b"50", b"40", b"50"]
            finally:
                marks.close()

        # Read where the tenant's quota is the plan's default (here every request of it is refused now;
        # webhooks still carry the events).
        async with reading(stack.url(), auth, last_event_id="0") as stream:
            assert stream.status == 200
            await until(lambda: len(stream.events) >= 2, "the threshold events on the stream")
        events = await outbox_events(migrated, tenant_id)
    assert [e["type"] for e in events] == ["quota.threshold_reached"] * 2
    period_start = month.start.isoformat().replace("+00:00", "Z")
    assert [e["data"] for e in events] == [
        {"threshold": 80, "period_start": period_start, "limit": 50, "used": 40},
        {"threshold": 100, "period_start": period_start, "limit": 50, "used": 50},
    ]
    assert [(e["type"], e["data"]) for e in stream.events] == [(e["type"], e["data"]) for e in events]


def users_command(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.users", *args],
        env={**os.environ, **stack.process_env("users")},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_an_operator_gives_a_tenant_its_own_quota(stack, gateway):
    tenant = await signup(gateway, plan="pro")
    done = users_command(stack, "set-quota", tenant.id, "3")
    assert done.returncode == 0, done.stderr
    auth = {"Authorization": f"Bearer {await login(gateway, tenant.email)}"}
    codes = [(await gateway.get("/v1/users/me", headers=auth)).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    # Past its quota, a tenant still sees where it stands.
    usage = await usage_once_written(gateway, auth, 4)
    assert (usage["quota"]["limit"], usage["quota"]["used"]) == (3, 3)
    assert total(usage, "/v1/users/me", "4xx") == 1
    # Back to the plan's: new tokens carry none of their own.
    assert users_command(stack, "set-quota", tenant.id, "plan").returncode == 0
    auth = {"Authorization": f"Bearer {await login(gateway, tenant.email)}"}
    assert (await gateway.get("/v1/users/me", headers=auth)).status_code == 200
    assert users_command(stack, "set-quota", str(uuid.uuid4()), "3").returncode == 1
    assert users_command(stack, "set-quota", tenant.id, "0").returncode != 0


async def test_usage_is_for_admins_and_its_range_is_checked(gateway):
    admin = await signup(gateway, plan="pro")
    member_email = f"member-{uuid.uuid4().hex[:10]}@example.com"
    created = await gateway.post(
        "/v1/users", json={"email": member_email, "password": PASSWORD, "role": "member"}, headers=admin.auth
    )
    assert created.status_code == 201, created.text
    member = {"Authorization": f"Bearer {await login(gateway, member_email)}"}
    refused = await gateway.get("/v1/usage", headers=member)
    assert refused.status_code == 403
    assert refused.json()["required_scope"] == USAGE_READ
    assert (await gateway.get("/v1/usage")).status_code == 401
    # A key without the scope is refused too; one with it (an admin's to give) reads.
    without = bearer("pro", tenant_id=admin.id, scopes=ALL_SCOPES - {USAGE_READ})
    assert (await gateway.get("/v1/usage", headers=without)).status_code == 403

    for _ in range(3):
        assert (await gateway.get("/v1/users/me", headers=admin.auth)).status_code == 200
    await usage_once_written(gateway, admin.auth, 4)  # the member's creation, and these three
    now = datetime.now(UTC)
    hourly = await usage_of(
        gateway, admin.auth, **{"from": (now - timedelta(hours=2)).isoformat(), "to": now.isoformat()}
    )
    assert set(hourly) == {"items", "totals", "quota"}
    item = next(i for i in hourly["items"] if i["route"] == "/v1/users/me")
    assert set(item) == {"start", "route", "status_class", "requests"}
    assert (item["status_class"], item["requests"]) == ("2xx", 3)
    assert item["start"].endswith(":00:00Z")
    assert set(hourly["quota"]) == {"period_start", "period_end", "limit", "used"}
    assert hourly["quota"]["used"] >= 3
    daily = await usage_of(
        gateway, admin.auth, granularity="day", **{"from": (now - timedelta(days=1)).isoformat(), "to": now.isoformat()}
    )
    assert total(daily, "/v1/users/me", "2xx") == 3
    assert all(i["start"].endswith("T00:00:00Z") for i in daily["items"])

    # The usage calls of a moment ago are counted too, once written.
    async def usage_calls_counted() -> bool:
        return total(await usage_of(gateway, admin.auth), "/v1/usage", "2xx") >= 2

    await eventually(usage_calls_counted)

    # The dashboard carries the month's use against the quota, for whoever may read usage.
    board = await gateway.get("/v1/users/me/dashboard", headers=admin.auth)
    assert board.status_code == 200, board.text
    assert set(board.json()["usage"]) == {"period_start", "period_end", "limit", "used"}
    assert board.json()["usage"]["limit"] == 10_000_000
    assert board.json()["usage"]["used"] >= 3
    members_board = await gateway.get("/v1/users/me/dashboard", headers=member)
    assert members_board.status_code == 200, members_board.text
    assert members_board.json()["usage"] is None

    bad = [
        {"from": "yesterday"},
        {"from": "2026-01-01T00:00:00"},  # no offset
        {"from": now.isoformat(), "to": (now - timedelta(hours=1)).isoformat()},
        {"from": (now - timedelta(days=40)).isoformat(), "to": now.isoformat()},
        {"granularity": "minute"},
    ]
    for params in bad:
        answer = await gateway.get("/v1/usage", params=params, headers=admin.auth)
        assert answer.status_code == 422, (params, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["error_code"] == "VALIDATION_FAILED"
    # A range after now holds nothing yet, one past the year 9999 in UTC included.
    later = [
        ((now + timedelta(days=1)).isoformat(), (now + timedelta(days=2)).isoformat()),
        ("9999-12-31T20:00:00-12:00", "9999-12-31T22:00:00-12:00"),
    ]
    for start, end in later:
        nothing = await usage_of(gateway, admin.auth, **{"from": start, "to": end})
        assert (nothing["items"], nothing["totals"]["requests"]) == ([], 0), (start, nothing)
