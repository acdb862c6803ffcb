"""The real servers the suite runs against: PostgreSQL and Redis.

Where a Docker engine answers, testcontainers starts them; otherwise the machine's own servers are
used, found through TEST_DATABASE_URL / TEST_REDIS_URL (defaults: the local PostgreSQL and Redis).
Each test session gets databases and a Redis key prefix of its own, removed at the end. A missing
server stops the run with a message that says what to start; nothing is ever skipped or faked.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import asyncpg
import redis

from shared.contract import PROCESSES

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
SERVICE_DATABASES = tuple(name for name, process in PROCESSES.items() if process.has_database)


class MissingServer(RuntimeError):
    pass


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class Servers:
    pg_admin_dsn: str  # plain libpq DSN of a maintenance database
    redis_url: str
    run_id: str

    def database_dsn(self, name: str) -> str:
        base, _, _ = self.pg_admin_dsn.rpartition("/")
        return f"{base}/{self.database_name(name)}"

    def database_url(self, name: str) -> str:
        """SQLAlchemy URL (asyncpg) of one service's test database."""
        return self.database_dsn(name).replace("postgresql://", "postgresql+asyncpg://", 1)

    def database_name(self, name: str) -> str:
        return f"portico_test_{self.run_id}_{name}"

    @property
    def redis_prefix(self) -> str:
        return f"portico-test-{self.run_id}:"


@contextmanager
def servers() -> Iterator[Servers]:
    run_id = uuid.uuid4().hex[:10]
    if "TEST_DATABASE_URL" not in os.environ and docker_available():
        from testcontainers.postgres import PostgresContainer
        from testcontainers.redis import RedisContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as pg, RedisContainer("redis:7-alpine") as rd:
            host, port = rd.get_container_host_ip(), rd.get_exposed_port(6379)
            yield from _session(Servers(pg.get_connection_url(), f"redis://{host}:{port}/0", run_id))
        return
    pg_dsn = os.environ.get("TEST_DATABASE_URL", DEFAULT_PG).replace("postgresql+asyncpg://", "postgresql://")
    redis_url = os.environ.get("TEST_REDIS_URL", DEFAULT_REDIS)
    yield from _session(Servers(pg_dsn, redis_url, run_id))


def _session(found: Servers) -> Iterator[Servers]:
    _check(found)
    asyncio.run(_create_databases(found))
    try:
        yield found
    finally:
        asyncio.run(_drop_databases(found))
        _drop_redis_keys(found)


def _check(found: Servers) -> None:
    try:
        asyncio.run(_ping_pg(found.pg_admin_dsn))
    except Exception as exc:
        raise MissingServer(
            f"PostgreSQL is not reachable at {found.pg_admin_dsn} ({exc!r}). Start it "
            "(pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) or set TEST_DATABASE_URL."
        ) from exc
    try:
        redis.Redis.from_url(found.redis_url, socket_connect_timeout=3).ping()
    except Exception as exc:
        raise MissingServer(
            f"Redis is not reachable at {found.redis_url} ({exc!r}). Start it "
            "(redis-server --daemonize yes --port 6379) or set TEST_REDIS_URL."
        ) from exc


async def _ping_pg(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    await conn.close()


async def _create_databases(found: Servers) -> None:
    conn = await asyncpg.connect(found.pg_admin_dsn)
    try:
        for name in SERVICE_DATABASES:
            await conn.execute(f'CREATE DATABASE "{found.database_name(name)}"')
    finally:
        await conn.close()


async def _drop_databases(found: Servers) -> None:
    conn = await asyncpg.connect(found.pg_admin_dsn)
    try:
        for name in SERVICE_DATABASES:
            await conn.execute(f'DROP DATABASE IF EXISTS "{found.database_name(name)}" WITH (FORCE)')
    finally:
        await conn.close()


def _drop_redis_keys(found: Servers) -> None:
    client = redis.Redis.from_url(found.redis_url)
    keys = list(client.scan_iter(match=found.redis_prefix + "*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
