"""What the edge tests share: a private Redis server they may stop, in-process gateways on the real
services, extra gateway processes, and tenants with tokens."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from jose import jwt

from gateway.app import create_app
from gateway.settings import GatewaySettings
from scripts.devstack import Stack, free_port
from shared.contract import ALL_SCOPES
from tests.conftest import FIXED_ADMISSION, INTERNAL_SECRET, JWT_SECRET, ROOT, running_app
from tests.infra import Servers
from tests.plans import grant_plan, signup_plan

PASSWORD = "correct-horse-9"


class PrivateRedis:
    """A redis-server of the test's own, which it may stop, pause and restart: the machine's shared
    Redis serves other test sessions and is never touched.

    Alone (`unix_socket` given), it listens on a Unix socket in a folder of its own: while it is
    stopped the socket refuses connections, and nothing else can ever take its address, so a restart
    comes back where the gateway looks for it. In a cluster it needs a TCP port (the nodes announce
    host and port to each other)."""

    def __init__(self, unix_socket: Path | None = None) -> None:
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not shutil.which(self.binary):
            raise RuntimeError(
                "redis-server is not installed; the Redis outage tests need it (apt-get install redis-server)"
            )
        self.unix_socket = unix_socket
        self.port = 0 if unix_socket is not None else free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}?db=0"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *options: str) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.unix_socket is not None:
            command += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        self.proc = subprocess.Popen(
            [*command, *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server at {self.url} did not start") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        """Kills the server at once, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        """The server keeps its connections but answers nothing: a hung Redis."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@contextlib.contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    with tempfile.TemporaryDirectory(prefix="portico-redis-") as directory:
        server = PrivateRedis(Path(directory) / "redis.sock")
        server.start()
        try:
            yield server
        finally:
            if server.proc is not None and server.proc.poll() is None:
                server.resume()
            server.stop()


class PrivateRedisCluster:
    """Three redis-server primaries on free local ports, joined into one Redis Cluster by hand (slots
    split in three, each node told to meet the first), with their files under `directory`."""

    SIZE = 3
    SLOTS = 16384

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.servers = [PrivateRedis() for _ in range(self.SIZE)]
        # The cluster bus ports: set, since the default (port + 10000) may be taken or beyond 65535.
        self.bus_ports = [free_port() for _ in self.servers]

    @property
    def url(self) -> str:
        """Any node: the cluster client finds the others."""
        return self.servers[0].url

    def start(self) -> None:
        for server, bus_port in zip(self.servers, self.bus_ports, strict=True):
            server.start(
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.directory / f"nodes-{server.port}.conf"),
                "--cluster-node-timeout", "5000",
                "--cluster-port", str(bus_port),
                "--dir", str(self.directory),
                "--logfile", str(self.directory / f"redis-{server.port}.log"),
            )  # fmt: skip
        clients = [server.client() for server in self.servers]
        try:
            share = self.SLOTS // self.SIZE
            for index, client in enumerate(clients):
                last = self.SLOTS - 1 if index == self.SIZE - 1 else (index + 1) * share - 1
                client.execute_command("CLUSTER ADDSLOTSRANGE", index * share, last)
                client.execute_command("CLUSTER SET-CONFIG-EPOCH", index + 1)
            for server, bus_port in zip(self.servers[1:], self.bus_ports[1:], strict=True):
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", server.port, bus_port)
            deadline = time.monotonic() + 30
            for client in clients:
                while client.execute_command("CLUSTER INFO")["cluster_state"] != "ok":
                    if time.monotonic() > deadline:
                        raise RuntimeError("the Redis Cluster did not reach state ok")
                    time.sleep(0.02)
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@contextlib.contextmanager
def private_redis_cluster(directory: Path) -> Iterator[PrivateRedisCluster]:
    cluster = PrivateRedisCluster(directory)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def gateway_settings(stack: Stack | None, **overrides: Any) -> GatewaySettings:
    """Settings of an in-process gateway in front of the stack's services."""
    kwargs: dict[str, Any] = {
        "environment": "test",
        "internal_token_secret": INTERNAL_SECRET,
        "jwt_secret": JWT_SECRET,
        "access_log": False,
        **FIXED_ADMISSION,
    }
    if stack is not None:
        for service in ("users", "orders", "inventory", "webhooks"):
            kwargs[f"{service}_url"] = stack.url(service)
    kwargs.update(overrides)
    return GatewaySettings(**kwargs)


def private_redis_settings(stack: Stack | None, server: PrivateRedis, **overrides: Any) -> GatewaySettings:
    """`gateway_settings` with the edge stores on `server`, a private Redis the test stops or hangs,
    each call to it given up after 0.5 s."""
    return gateway_settings(stack, **{"redis_url": server.url, "redis_timeout_seconds": 0.5, **overrides})


@contextlib.asynccontextmanager
async def in_process_gateway(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(create_app(settings)) as (client, _):
        yield client


def http_scope(request: httpx.Request, state: Mapping[str, Any]) -> dict[str, Any]:
    """The scope a server hands the app for `request`, from 127.0.0.1 (for a test that plays the
    server itself: what the client sends, and when it goes)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.url.path,
        "raw_path": request.url.raw_path,
        "query_string": request.url.query,
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in request.headers.raw],
        "client": ("127.0.0.1", 123),
        "server": ("test", 80),
        "state": dict(state),
    }


def ws_scope(token: str, state: Mapping[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()) -> dict[str, Any]:
    """The scope a server hands the gateway for `WS /v1/ws?token=<token>`, from 127.0.0.1."""
    return {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/v1/ws",
        "raw_path": b"/v1/ws",
        "root_path": "",
        "query_string": f"token={token}".encode(),
        "headers": [(b"host", b"test"), *headers],
        "client": ("127.0.0.1", 123),
        "server": ("test", 80),
        "subprotocols": [],
        "state": dict(state),
    }


T = TypeVar("T")


async def concurrently(calls: Iterator[Coroutine[Any, Any, T]]) -> list[T]:
    """Runs the calls at once and returns their results in order. Unlike `asyncio.gather`, a failing
    call cancels the others and waits for them, so none is left running on a client the test's
    fixture is about to close (where it would reopen connections nobody closes)."""
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(call) for call in calls]
    return [task.result() for task in tasks]


def unique_prefix(base: str) -> str:
    """A key prefix of one gateway under the session's, so its counters start empty and the session's
    cleanup still removes them."""
    return f"{base}{uuid.uuid4().hex[:8]}:"


# Where the edge stores can be: in-process, the session's Redis, the session's Redis Cluster.
BACKENDS = ["memory", "redis", "cluster"]


def backend_settings(request: pytest.FixtureRequest, infra: Servers) -> dict[str, Any]:
    """Gateway settings that put the edge stores where `request.param` (one of BACKENDS) says, under
    a fresh key prefix. The cluster is started the first time a test asks for it."""
    if request.param == "memory":
        return {}
    if request.param == "redis":
        return {"redis_url": infra.redis_url, "redis_key_prefix": unique_prefix(infra.redis_prefix)}
    return cluster_settings(request.getfixturevalue("redis_cluster"), infra)


def cluster_settings(cluster: PrivateRedisCluster, infra: Servers) -> dict[str, Any]:
    """Gateway settings for the edge stores on `cluster`, under a fresh key prefix.

    A command slower than the socket timeout makes redis-py's cluster client drop that node's
    connections, failing the other commands in flight on them, and it does not wait for a free
    connection past the pool's size: on a loaded test machine both are noise, not the contract."""
    return {
        "redis_url": cluster.url,
        "redis_cluster": True,
        "redis_key_prefix": unique_prefix(infra.redis_prefix),
        "redis_timeout_seconds": 10,
        "redis_max_connections": 1000,
    }


def bearer(plan: str = "pro", tenant_id: str | None = None, scopes: frozenset[str] = ALL_SCOPES) -> dict[str, str]:
    """Authorization for a caller made up on the spot (a token like the users service issues), for
    tests where no user behind it needs to exist."""
    now = int(time.time())
    claims = {
        "sub": str(uuid.uuid4()),
        "tid": tenant_id or str(uuid.uuid4()),
        "scope": " ".join(sorted(scopes)),
        "plan": plan,
        "role": "admin",
        "iat": now,
        "exp": now + 600,
        "iss": "portico",
    }
    return {
        "Authorization": "Bearer " + jwt.encode(claims, JWT_SECRET, algorithm="HS256", headers={"kid": "portico-1"})
    }


@dataclass
class Tenant:
    id: str
    plan: str
    admin_id: str
    email: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def signup(gateway: httpx.AsyncClient, plan: str = "pro", infra: Servers | None = None) -> Tenant:
    """A tenant on `plan` and its admin's token; a plan sign-up does not offer is given on `infra`'s
    users database, as an operator gives it (`tests/plans.py`)."""
    email = f"edge-{uuid.uuid4().hex[:12]}@example.com"
    created = await gateway.post(
        "/v1/tenants",
        json={"name": "Edge", "plan": signup_plan(plan), "admin_email": email, "admin_password": PASSWORD},
    )
    assert created.status_code == 201, created.text
    await grant_plan(infra, created.json()["tenant"]["id"], plan)
    token = await gateway.post("/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert token.status_code == 200, token.text
    body = created.json()
    return Tenant(body["tenant"]["id"], plan, body["user"]["id"], email, token.json()["access_token"])


async def login(gateway: httpx.AsyncClient, email: str) -> str:
    token = await gateway.post("/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert token.status_code == 200, token.text
    return str(token.json()["access_token"])


@contextlib.contextmanager
def extra_gateways(stack: Stack, count: int, env: dict[str, str] | None = None) -> Iterator[list[str]]:
    """`count` more gateway processes in front of the stack's services, sharing its Redis."""
    started: list[Stack] = []
    try:
        for _ in range(count):
            extra = Stack(
                ports={**stack.ports, "gateway": free_port()},
                env=stack.env,
                env_for={"gateway": env or {}},
                log_dir=stack.log_dir / f"extra-gateway-{len(started)}" if stack.log_dir else None,
                cwd=ROOT,
            )
            extra.start_one("gateway")
            started.append(extra)
        for extra in started:
            extra.wait_ready(60)
        yield [extra.url() for extra in started]
    finally:
        for extra in started:
            extra.stop()
