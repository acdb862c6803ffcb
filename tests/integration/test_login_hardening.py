"""Logins against the users service on real PostgreSQL: password checks hold no database connection
and are bounded (a flood queues or is refused with 503), and wrong passwords slow one account down
progressively without locking its owner out for long."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pwdlib.hashers.argon2 import Argon2Hasher

from services.users.app import create_app
from services.users.security import LoginThrottle
from services.users.settings import UsersSettings
from shared.contract import ANONYMOUS
from tests.conftest import internal_headers, running_app, settings_kwargs
from tests.integration.test_api_keys import PASSWORD, db_rows, tenant_admin


def users_service(infra, **overrides: Any) -> FastAPI:
    return create_app(UsersSettings(**{**settings_kwargs(infra, "users"), **overrides}))


@contextlib.asynccontextmanager
async def users_app(infra, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(users_service(infra, **overrides)) as (client, _):
        yield client


async def login(client: httpx.AsyncClient, signer, email: str, password: str) -> httpx.Response:
    return await client.post(
        "/auth/token",
        data={"username": email, "password": password},
        headers=internal_headers(signer, "users", ANONYMOUS),
    )


async def admin_email(client: httpx.AsyncClient, signer, migrated) -> tuple[str, Any]:
    admin = await tenant_admin(client, signer)
    rows = await db_rows(migrated, "SELECT email FROM users WHERE id = $1", admin.identity.subject)
    return rows[0]["email"], admin


def slow_hash(password: str, at_least: float) -> tuple[str, float]:
    """An argon2 hash of `password` whose computation took at least `at_least` seconds on this machine
    now: its time cost raised until it does. A check of it costs as much (argon2 reads its costs from
    the hash), whatever the speed of the CPU."""
    time_cost = 3
    while True:
        started = time.perf_counter()
        hashed = Argon2Hasher(time_cost=time_cost).hash(password)
        took = time.perf_counter() - started
        if took >= at_least:
            return hashed, took
        time_cost = max(time_cost * 2, math.ceil(time_cost * at_least * 1.2 / took))


async def test_password_checks_hold_no_connection_while_they_wait_or_hash(migrated, signer):
    """One connection in the pool and one password check at a time; the account's password hash is
    made here so that checking it takes a while on this machine (measured, so the CPU's speed changes
    nothing). Two logins at once: whenever one is being checked and the other waits for its turn, no
    connection is out of the pool. A login that held its connection while it hashed or waited would
    hold the only one (and the other login would wait for it, not for its turn)."""
    hashed, _ = await asyncio.to_thread(slow_hash, PASSWORD, 0.5)
    app = users_service(
        migrated,
        db_pool_size=1,
        db_max_overflow=0,
        password_hash_concurrency=1,
        password_hash_queue=10,
        password_hash_queue_timeout_seconds=300,
    )
    async with running_app(app) as (client, lifespan):
        state = lifespan["app"]
        hasher, pool = state.context.hasher, state.engine.pool
        email, _ = await admin_email(client, signer, migrated)
        await db_rows(migrated, "UPDATE users SET password_hash = $1 WHERE email = $2", hashed, email)
        logins = [asyncio.ensure_future(login(client, signer, email, PASSWORD)) for _ in range(2)]
        seen = 0
        while not all(task.done() for task in logins):
            if hasher.running == 1 and hasher.waiting == 1:
                assert pool.checkedout() == 0
                seen += 1
            await asyncio.sleep(0.005)
        answers = await asyncio.gather(*logins)
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    # The first check takes at least half a second, all of it with the second login waiting.
    assert seen >= 1


async def test_a_caller_that_waits_too_long_for_its_turn_is_refused_with_503(migrated, signer):
    # One account's logins at once: more than its free attempts, which are counted before they are
    # checked (the throttle's own test is below); the queue is what this test is about.
    async with users_app(
        migrated,
        password_hash_concurrency=1,
        password_hash_queue=100,
        password_hash_queue_timeout_seconds=0.01,
        login_free_failures=100,
    ) as client:
        email, _ = await admin_email(client, signer, migrated)
        answers = await asyncio.gather(*(login(client, signer, email, PASSWORD) for _ in range(8)))
        codes = [a.status_code for a in answers]
        assert set(codes) <= {200, 503}, [a.text for a in answers]
        assert 503 in codes, codes
        assert {a.json()["error_code"] for a in answers if a.status_code == 503} == {"PASSWORD_HASHING_BUSY"}


async def test_a_login_flood_beyond_the_queue_is_refused_with_503_and_retry_after(migrated, signer):
    async with users_app(
        migrated, password_hash_concurrency=1, password_hash_queue=1, login_free_failures=100
    ) as client:
        email, _ = await admin_email(client, signer, migrated)
        answers = await asyncio.gather(*(login(client, signer, email, PASSWORD) for _ in range(16)))
        codes = [a.status_code for a in answers]
        assert set(codes) <= {200, 503}, [a.text for a in answers]
        assert 200 in codes, codes
        assert 503 in codes, codes
        busy = next(a for a in answers if a.status_code == 503)
        assert busy.headers["content-type"] == "application/problem+json"
        assert busy.json()["error_code"] == "PASSWORD_HASHING_BUSY"
        assert busy.headers["retry-after"] == "1"
        # Once the flood is over, logins work again.
        assert (await login(client, signer, email, PASSWORD)).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'users_password_hashing_total{outcome="refused_queue_full"}' in metrics


def test_the_delay_doubles_from_one_second_up_to_the_cap():
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, tzinfo=UTC)
    throttle = LoginThrottle(free=5, max_delay_seconds=60)
    delays = [throttle.blocked_until(n, now) for n in range(1, 14)]
    assert delays[:5] == [None] * 5
    seconds = [(d - now).total_seconds() for d in delays[5:] if d is not None]
    assert seconds == [1, 2, 4, 8, 16, 32, 60, 60]
    assert (throttle.blocked_until(10**6, now) - now).total_seconds() == 60  # type: ignore[operator]  # blocked: never None


async def test_wrong_passwords_slow_one_account_down_and_the_owner_gets_in_soon(migrated, signer):
    async with users_app(migrated, login_free_failures=2, login_max_delay_seconds=2) as client:
        email, _ = await admin_email(client, signer, migrated)
        other, _ = await admin_email(client, signer, migrated)
        for _ in range(2):
            assert (await login(client, signer, email, "wrong-password")).status_code == 401
        # Each further wrong password makes the next attempt wait (1 s, then 2 s): one is refused soon.
        answers = []
        for _ in range(10):
            answers.append(await login(client, signer, email, "wrong-password"))
            if answers[-1].status_code == 429:
                break
        throttled = answers[-1]
        assert throttled.status_code == 429, [a.text for a in answers]
        assert throttled.json()["error_code"] == "LOGIN_THROTTLED"
        assert 1 <= int(throttled.headers["retry-after"]) <= 2
        # Another account is not affected.
        assert (await login(client, signer, other, PASSWORD)).status_code == 200
        # The owner gets in once the delay is over (at most the cap after the last wrong password).
        deadline = time.monotonic() + 30
        while True:
            owner = await login(client, signer, email, PASSWORD)
            if owner.status_code == 200:
                break
            assert owner.status_code == 429, owner.text
            assert int(owner.headers["retry-after"]) <= 2
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        rows = await db_rows(migrated, "SELECT failed_logins, login_blocked_until FROM users WHERE email = $1", email)
        assert (rows[0]["failed_logins"], rows[0]["login_blocked_until"]) == (0, None)
        # A good password starts the count over: the next wrong one is a plain 401.
        assert (await login(client, signer, email, "wrong-password")).status_code == 401
        metrics = (await client.get("/metrics")).text
        for outcome in ("ok", "wrong_password", "throttled"):
            assert f'users_logins_total{{outcome="{outcome}"}}' in metrics


async def test_wrong_passwords_sent_at_once_are_checked_no_more_than_one_after_another(migrated, signer):
    """Each attempt counts before its password is checked. An account past its free wrong passwords,
    not paused now: of twenty wrong passwords at once, one is checked (401) and begins a pause of 32 s
    (its sixth beyond the free ones), which the others meet (429), as they would one after another."""
    async with users_app(migrated, login_free_failures=3, login_max_delay_seconds=60) as client:
        email, _ = await admin_email(client, signer, migrated)
        await db_rows(migrated, "UPDATE users SET failed_logins = 8 WHERE email = $1", email)
        answers = await asyncio.gather(*(login(client, signer, email, "wrong-password") for _ in range(20)))
        codes = sorted(a.status_code for a in answers)
        assert codes == [401] + [429] * 19, [a.text for a in answers]
        assert {a.json()["error_code"] for a in answers if a.status_code == 429} == {"LOGIN_THROTTLED"}
        rows = await db_rows(migrated, "SELECT failed_logins FROM users WHERE email = $1", email)
        assert rows[0]["failed_logins"] == 9


async def test_an_attempt_refused_for_want_of_a_hashing_slot_is_not_counted(migrated, signer):
    """One check at a time and no queue: while another account's password is being checked, a wrong
    password (which would begin a pause: no free ones) is refused with 503 and leaves its account as
    it was: nothing counted, no pause."""
    hashed, _ = await asyncio.to_thread(slow_hash, PASSWORD, 0.5)
    app = users_service(migrated, password_hash_concurrency=1, password_hash_queue=0, login_free_failures=0)
    async with running_app(app) as (client, lifespan):
        hasher = lifespan["app"].context.hasher
        busy, _ = await admin_email(client, signer, migrated)
        refused, _ = await admin_email(client, signer, migrated)
        await db_rows(migrated, "UPDATE users SET password_hash = $1 WHERE email = $2", hashed, busy)
        checking = asyncio.ensure_future(login(client, signer, busy, PASSWORD))
        while hasher.running == 0:
            await asyncio.sleep(0.005)
        answer = await login(client, signer, refused, "wrong-password")
        assert answer.status_code == 503, answer.text
        assert answer.json()["error_code"] == "PASSWORD_HASHING_BUSY"
        assert (await checking).status_code == 200
    rows = await db_rows(migrated, "SELECT failed_logins, login_blocked_until FROM users WHERE email = $1", refused)
    assert (rows[0]["failed_logins"], rows[0]["login_blocked_until"]) == (0, None)


@pytest.mark.parametrize("password", ["wrong-password", PASSWORD])
async def test_an_unknown_email_is_the_same_401_and_never_throttled(migrated, signer, password):
    async with users_app(migrated, login_free_failures=0) as client:
        for _ in range(3):
            answer = await login(client, signer, "nobody-here@example.com", password)
            assert answer.status_code == 401
            assert answer.json()["error_code"] == "INVALID_CREDENTIALS"
