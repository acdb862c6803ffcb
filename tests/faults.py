"""Fault injectors: the failures a real process cannot be asked to produce on cue.

- `HttpFaultProxy`: a real HTTP/1.1 proxy in front of one of our services. Each request matching a
  rule gets that rule's fault: held until released (then any of the others), answered without
  reaching the service, forwarded (its answer optionally held until released, so the service can be
  killed after doing the work and before the caller hears of it)
  and then answered wrongly (the service did the work, the caller hears something else), forwarded
  and then never answered, or forwarded and then the connection dropped. Everything else passes
  through unchanged.
- `TcpProxy`: a byte-for-byte TCP proxy (in front of PostgreSQL) that can cut every connection and
  refuse new ones, then come back.
- `refused_port`: an address that refuses connections by construction, for "unreachable".
- `failing_statements`: a trigger that makes the database refuse one kind of statement on one table
  (for one tenant), for the steps whose failure no process can be asked for.
- `ServiceProcess`: one of our services as a real subprocess, which a test can hang (`SIGSTOP`),
  resume, kill (`SIGKILL`) and restart.

The proxies keep their listening socket for their whole life, so their address never points at
anything else, and "refused" is a connection they accept and close at once rather than a port that
was freed and might be reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import asyncpg
import h11
import httpx

from scripts.devstack import DEFAULT_PORTS, Stack, free_port

Action = Literal["forward", "answer", "forward_then_answer", "forward_then_hang", "forward_then_drop", "drop"]


@dataclass
class Fault:
    """What happens to requests whose method and path match."""

    method: str
    path: str  # a regular expression matched against the whole path
    action: Action
    status: int = 503
    body: bytes = b""
    content_type: str = "application/json"
    # More headers of an `answer`.
    headers: list[tuple[str, str]] = field(default_factory=list)
    times: int | None = None  # None: every matching request; else only the next `times` ones
    # Held: the request waits at the proxy until `release()`, then meets its action.
    hold: bool = False
    # Answer held (forward_* actions): the service has answered, and its answer waits at the proxy
    # until `release()`, then meets the action (a test can kill the service meanwhile).
    hold_answer: bool = False
    released: asyncio.Event = field(default_factory=asyncio.Event)
    hits: int = 0
    # Set once a matching request has reached the proxy (not yet the service: see `answered`).
    seen: asyncio.Event = field(default_factory=asyncio.Event)
    # Set once the service answered a forwarded request (its work is done, whatever the caller hears).
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return method == self.method and re.fullmatch(self.path, path) is not None

    def release(self) -> None:
        self.released.set()


@dataclass
class HttpFaultProxy:
    """A controllable HTTP/1.1 proxy in front of `upstream` (see the module docstring)."""

    upstream: str
    faults: list[Fault] = field(default_factory=list)
    sock: socket.socket = field(init=False)
    server: asyncio.Server | None = None
    client: httpx.AsyncClient | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    forwarded: list[tuple[str, str, int]] = field(default_factory=list)
    # Every request that reached the proxy: method, target and headers (names lowercased).
    received: list[tuple[str, str, list[tuple[str, str]]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def add(self, method: str, path: str, action: Action, **kwargs: object) -> Fault:
        fault = Fault(method, path, action, **kwargs)  # type: ignore[arg-type]  # Fault's own fields
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        for fault in self.faults:
            fault.release()
        self.faults.clear()

    async def __aenter__(self) -> HttpFaultProxy:
        self.client = httpx.AsyncClient(timeout=120, trust_env=False)
        self.server = await asyncio.start_server(self._accept, sock=self.sock)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.clear()
        assert self.server is not None
        assert self.client is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()
        await self.client.aclose()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # The proxy is stopping: asyncio's stream server expects its handler to end, not raise.
            pass
        finally:
            self.tasks.discard(task)
            self.writers.discard(writer)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            request, body = await self._read_request(conn, reader)
            if request is None:
                return
            method, target = request.method.decode(), request.target.decode()
            self.received.append((method, target, [(k.decode().lower(), v.decode()) for k, v in request.headers]))
            path = target.split("?", 1)[0]
            fault = next((f for f in self.faults if f.matches(method, path)), None)
            if fault is not None:
                fault.hits += 1
                fault.seen.set()
            status, headers, content = await self._respond(fault, request, target, body)
            if status is None:
                return  # the connection is dropped without an answer
            if fault is not None:
                fault.done.set()
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
            writer.write(conn.send(h11.Data(data=content)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None, b""
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, body

    async def _respond(
        self, fault: Fault | None, request: h11.Request, target: str, body: bytes
    ) -> tuple[int | None, list[tuple[str, str]], bytes]:
        if fault is not None and fault.hold:
            await fault.released.wait()
        if fault is not None and fault.action == "drop":
            return None, [], b""
        if fault is not None and fault.action == "answer":
            return fault.status, _content_headers(fault), fault.body
        assert self.client is not None
        skip = {b"host", b"content-length", b"transfer-encoding", b"connection"}
        headers = [(k.decode(), v.decode()) for k, v in request.headers if k.lower() not in skip]
        try:
            answer = await self.client.request(
                request.method.decode(), self.upstream + target, headers=headers, content=body
            )
        except httpx.TransportError:
            return None, [], b""  # the service is down: so is the connection to it
        method = request.method.decode()
        self.forwarded.append((method, target, answer.status_code))
        if fault is not None:
            fault.answered.set()
            if fault.hold_answer:
                await fault.released.wait()
        if fault is not None and fault.action == "forward_then_answer":
            fault.done.set()
            return fault.status, _content_headers(fault), fault.body
        if fault is not None and fault.action == "forward_then_hang":
            fault.done.set()
            await asyncio.Event().wait()  # until the caller gives up or the proxy stops
        if fault is not None and fault.action == "forward_then_drop":
            fault.done.set()
            return None, [], b""
        keep = {"content-type", "location", "retry-after", "etag"}
        return answer.status_code, [(k, v) for k, v in answer.headers.items() if k in keep], answer.content


def _content_headers(fault: Fault) -> list[tuple[str, str]]:
    return [("content-type", fault.content_type), *fault.headers]


@dataclass
class TcpProxy:
    """Forwards TCP connections to `upstream` (host, port) until `cut()`; then every connection is
    closed and new ones are accepted and closed at once, until `restore()`."""

    upstream: tuple[str, int]
    sock: socket.socket = field(init=False)
    server: asyncio.Server | None = None
    cut_off: bool = False
    pipes: set[asyncio.StreamWriter] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    async def __aenter__(self) -> TcpProxy:
        self.server = await asyncio.start_server(self._accept, sock=self.sock)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        self.cut()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    def cut(self) -> None:
        self.cut_off = True
        for writer in list(self.pipes):
            writer.transport.abort()
        self.pipes.clear()

    def restore(self) -> None:
        self.cut_off = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.pipes.update((writer, up_writer))
        pumps = [asyncio.create_task(_pump(reader, up_writer)), asyncio.create_task(_pump(up_reader, writer))]
        self.tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
                self.tasks.discard(pump)
            for end in (writer, up_writer):
                self.pipes.discard(end)
                end.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A local port that refuses every connection for as long as the block runs: bound by this
    process and never listened on, so nothing else can take it meanwhile (a port merely freed could
    be picked up by any other program)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


@contextlib.asynccontextmanager
async def failing_statements(dsn: str, table: str, statement: str, tenant_id: str | None = None) -> AsyncIterator[None]:
    """While the block runs, every `statement` (INSERT, UPDATE or DELETE) on `table` raises in the
    database, for the rows of `tenant_id` only when one is given."""
    assert statement in ("INSERT", "UPDATE", "DELETE"), statement
    name = f"portico_fault_{uuid.uuid4().hex[:12]}"
    row = "NEW" if statement == "INSERT" else "OLD"
    when = f"WHEN ({row}.tenant_id = '{uuid.UUID(tenant_id)}')" if tenant_id is not None else ""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger AS $$ "
            f"BEGIN RAISE EXCEPTION 'injected fault: {statement} on {table} refused'; END $$ LANGUAGE plpgsql"
        )
        await conn.execute(
            f"CREATE TRIGGER {name} BEFORE {statement} ON {table} FOR EACH ROW {when} EXECUTE FUNCTION {name}()"
        )
        try:
            yield
        finally:
            await conn.execute(f"DROP TRIGGER {name} ON {table}")
            await conn.execute(f"DROP FUNCTION {name}()")
    finally:
        await conn.close()


@dataclass
class ServiceProcess:
    """One service of ours as a real subprocess on a free port, which a test can hang, resume, kill
    and start again (each start on a new port: a test reaches it through a proxy whose address stays)."""

    name: str
    env: Mapping[str, str]
    log_dir: Path
    cwd: Path
    # Applied last, over what the stack sets (its port and the other services' addresses).
    own_env: Mapping[str, str] = field(default_factory=dict)
    stack: Stack | None = None

    def start(self, timeout: float = 60.0) -> None:
        # The other services' addresses are the stack's defaults; the processes run here call none.
        ports = {**DEFAULT_PORTS, self.name: free_port()}
        self.stack = Stack(
            ports=ports,
            env=self.env,
            env_for={self.name: self.own_env},
            log_dir=self.log_dir,
            cwd=self.cwd,
            workers=(),
        )
        self.stack.start_one(self.name)
        self.stack.wait_ready(timeout, self.name)

    @property
    def url(self) -> str:
        assert self.stack is not None
        return self.stack.url(self.name)

    @property
    def pid(self) -> int:
        assert self.stack is not None
        return self.stack.procs[self.name].pid

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        assert self.stack is not None
        proc = self.stack.procs.pop(self.name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self) -> None:
        if self.stack is None:
            return
        proc = self.stack.procs.get(self.name)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
        self.stack.stop_one(self.name)


@contextlib.contextmanager
def service_process(name: str, env: Mapping[str, str], log_dir: Path, cwd: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(name, env, log_dir, cwd)
    process.start()
    try:
        yield process
    finally:
        process.stop()


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = 60.0, interval: float = 0.05) -> None:
    """Waits until the async callable `check` answers true; fails only a build that never gets there."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {getattr(check, '__name__', check)}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def fault_proxy(upstream: str) -> AsyncIterator[HttpFaultProxy]:
    async with HttpFaultProxy(upstream) as proxy:
        yield proxy
