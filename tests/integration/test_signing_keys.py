"""Signing keys rotate while traffic runs: two users service processes on RS256 sharing their
database, rotating every few seconds, and in-process gateways verifying tokens through the JWKS.
No request fails, old tokens keep working, and tokens with made-up `kid`s cost at most one JWKS
fetch per interval."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from jose import jwt

from scripts.devstack import Stack, free_port
from services.users.settings import UsersSettings
from services.users.signing import Key, KeyRing
from tests.conftest import ROOT
from tests.edge_support import PASSWORD, gateway_settings, in_process_gateway

ROTATION_SECONDS = 3


@contextlib.contextmanager
def rs256_users(stack: Stack, count: int, log_dir) -> Iterator[list[str]]:
    """`count` users service processes signing with RS256 keys kept in the session's users database."""
    env = {
        **stack.env,
        "USERS_JWT_ALGORITHM": "RS256",
        "USERS_JWT_KEY_ROTATION_SECONDS": str(ROTATION_SECONDS),
        # Published a second and a half before it signs: longer than the gateways' refresh interval.
        "USERS_JWT_KEY_ACTIVATION_SECONDS": "1.5",
        "USERS_JWT_KEY_REFRESH_SECONDS": "0.3",
        "USERS_ACCESS_TOKEN_TTL_SECONDS": "600",
    }
    started: list[Stack] = []
    try:
        for index in range(count):
            one = Stack(
                ports={**stack.ports, "users": free_port()},
                env=env,
                log_dir=log_dir / f"rs256-users-{index}",
                cwd=ROOT,
                workers=(),
            )
            one.start_one("users")
            started.append(one)
        for one in started:
            one.wait_ready(60, "users")
        yield [one.url("users") for one in started]
    finally:
        for one in started:
            one.stop()


async def served(users_url: str, route: str) -> float:
    async with httpx.AsyncClient(base_url=users_url) as users:
        text = (await users.get("/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("http_requests_total{") and f'route="{route}"' in line
    )


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def test_rotating_keys_while_traffic_runs_fails_no_request(stack, tmp_path):
    with rs256_users(stack, 2, tmp_path) as users_urls:
        settings = [
            gateway_settings(
                stack,
                users_url=url,
                jwt_algorithm="RS256",
                jwks_refresh_seconds=1.0,
                auth_failure_limit="10000/60s",
                idempotency_enabled=False,
            )
            for url in users_urls
        ]
        async with in_process_gateway(settings[0]) as one, in_process_gateway(settings[1]) as two:
            email = f"rotate-{uuid.uuid4().hex[:10]}@example.com"
            created = await one.post(
                "/v1/tenants", json={"name": "Rotate", "admin_email": email, "admin_password": PASSWORD}
            )
            assert created.status_code == 201, created.text
            tokens: list[str] = []
            failures: list[str] = []
            deadline = time.monotonic() + 60
            # Traffic through both gateways, each in front of its own users instance, until tokens of
            # four key generations have been issued: every token so far must keep working on both.
            while len({kid_of(t) for t in tokens}) < 4:
                assert time.monotonic() < deadline, f"saw only the kids {sorted({kid_of(t) for t in tokens})}"
                for gateway in (one, two):
                    login = await gateway.post("/v1/auth/token", data={"username": email, "password": PASSWORD})
                    if login.status_code != 200:
                        failures.append(f"login: {login.status_code} {login.text}")
                        continue
                    tokens.append(login.json()["access_token"])
                for gateway in (one, two):
                    # The newest, and one of every key generation seen so far.
                    newest = {kid_of(t): t for t in tokens}
                    for token in {tokens[-1], *newest.values()}:
                        me = await gateway.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})
                        if me.status_code != 200:
                            failures.append(f"{kid_of(token)}: {me.status_code} {me.text}")
                await asyncio.sleep(0.1)
            assert failures == []
            # The first tokens work still, and their key is still published, through the gateway too.
            first = tokens[0]
            for gateway in (one, two):
                me = await gateway.get("/v1/users/me", headers={"Authorization": f"Bearer {first}"})
                assert me.status_code == 200, me.text
            jwks = await one.get("/.well-known/jwks.json")
            assert jwks.status_code == 200
            published = {key["kid"] for key in jwks.json()["keys"]}
            assert {kid_of(t) for t in tokens} <= published
            assert all(key["kty"] == "RSA" and "d" not in key for key in jwks.json()["keys"])


async def test_made_up_kids_cost_at_most_one_jwks_fetch_per_interval(stack, tmp_path):
    with rs256_users(stack, 1, tmp_path) as (users_url,):
        settings = gateway_settings(
            stack,
            users_url=users_url,
            jwt_algorithm="RS256",
            jwks_refresh_seconds=300,
            auth_failure_limit="10000/60s",
        )
        async with in_process_gateway(settings) as gateway:
            before = await served(users_url, "/.well-known/jwks.json")
            now = int(time.time())
            claims = {"sub": "u", "tid": "t", "iss": "portico", "iat": now, "exp": now + 60}
            answers = await asyncio.gather(
                *(
                    gateway.get(
                        "/v1/users/me",
                        headers={
                            "Authorization": "Bearer "
                            + jwt.encode(claims, "x" * 32, algorithm="HS256", headers={"kid": secrets.token_hex(8)})
                        },
                    )
                    for _ in range(40)
                )
            )
            assert {a.status_code for a in answers} == {401}
            assert {a.json()["error_code"] for a in answers} == {"INVALID_TOKEN"}
            assert await served(users_url, "/.well-known/jwks.json") == before + 1


def key(generation: int, created_at: datetime) -> Key:
    return Key(f"k{generation}", generation, created_at, "pem", {"kid": f"k{generation}"})


@pytest.mark.parametrize(
    ("seconds", "signing", "published"),
    [
        # k3 is brand new: published already, but k2 signs until k3 is a minute old.
        (0, "k2", ["k3", "k2", "k1"]),
        (120, "k3", ["k3", "k2", "k1"]),
        # k2 took over at -1 min + 1 min: k1's last tokens expire an hour later (+ a minute of skew).
        (3690, "k3", ["k3", "k2"]),
        (3780, "k3", ["k3"]),
    ],
)
def test_a_key_signs_once_published_long_enough_and_stays_published_while_its_tokens_live(seconds, signing, published):
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ring = KeyRing(
        UsersSettings(
            jwt_algorithm="RS256",
            access_token_ttl_seconds=3600,
            jwt_key_activation_seconds=60,
            jwt_key_rotation_seconds=86400,
        ),
        sessionmaker=None,  # type: ignore[arg-type]  # never touched: nothing is refreshed here
    )
    ring.keys = [key(3, start), key(2, start - timedelta(minutes=1)), key(1, start - timedelta(days=2))]
    now = start + timedelta(seconds=seconds)
    assert [k["kid"] for k in ring.published(now)] == published
    assert ring.signing_key(now).kid == signing


def test_a_first_key_signs_at_once():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ring = KeyRing(UsersSettings(jwt_algorithm="RS256"), sessionmaker=None)  # type: ignore[arg-type]  # never touched
    ring.keys = [key(1, start)]
    assert ring.signing_key(start).kid == "k1"
