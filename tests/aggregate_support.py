"""Services that misbehave on purpose, for the aggregate and resilience tests: real sockets in the
test's event loop that hang, fail, answer garbage or a scripted answer, and record every connection
and when its peer went away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from scripts.devstack import Stack, free_port
from tests.conftest import ROOT, service_env
from tests.edge_support import gateway_settings, in_process_gateway
from tests.infra import Servers

# The aggregate budget of the gateways these tests run.
BUDGET = 1.0

# What a scripted service answers: (status, headers, body), or None to never answer.
Answer = tuple[int, dict[str, str], bytes] | None


def problem(status: int, code: str, detail: str, **extra: Any) -> tuple[int, dict[str, str], bytes]:
    body = {"type": "about:blank", "title": code, "status": status, "detail": detail, "error_code": code, **extra}
    return status, {"content-type": "application/problem+json"}, json.dumps(body).encode()


def answer_json(status: int, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return status, {"content-type": "application/json", **(headers or {})}, json.dumps(body).encode()


GARBAGE: Answer = (200, {"content-type": "application/json"}, b"<html>not json</html>")
# A script's answer that is none: the request is read, and the connection closed at once (an instance
# killed mid-request).
DROP: Answer = (0, {}, b"")
FEED_PATH = "/events"
_FEED_BODY = b'{"items": [], "next_after": 0}'
EMPTY_FEED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(_FEED_BODY)).encode()
    + b"\r\n\r\n"
    + _FEED_BODY
)


@dataclass
class ScriptedService:
    """Answers every request with `script(method, path)` (after `delay` seconds; None: never, `DROP`:
    closes the connection); records requests, and how many connections its peers closed while it was
    still holding them."""

    script: Callable[[str, str], Answer | Awaitable[Answer]]
    delay: float = 0.0
    port: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)
    connections: int = 0
    disconnects: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = next(
                    (int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), 0
                )
                if length:
                    await reader.readexactly(length)
                if path.startswith(FEED_PATH):
                    # The gateway's real-time relay polls the orders feed in the background: an empty
                    # feed, neither recorded nor scripted, so tests see only their own calls.
                    writer.write(EMPTY_FEED)
                    await writer.drain()
                    continue
                self.requests.append((method, path))
                if self.delay:
                    await asyncio.sleep(self.delay)
                answer = self.script(method, path)
                if not isinstance(answer, tuple) and answer is not None:
                    answer = await answer
                if answer is None:
                    # Never answer: wait until the peer goes away (EOF), and count it.
                    await reader.read()
                    self.disconnects += 1
                    return
                if answer is DROP:
                    return
                status, headers, body = answer
                head_lines = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}"]
                head_lines += [f"{name}: {value}" for name, value in headers.items()]
                writer.write(("\r\n".join(head_lines) + "\r\n\r\n").encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ScriptedService]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)


async def eventually(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Waits until `condition()` holds, with a generous deadline for a loaded machine."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


SERVICES_ONLY = ("users", "orders", "inventory")


@contextlib.contextmanager
def services_stack(infra: Servers, log_dir: Any, env: dict[str, str] | None = None) -> Iterator[Stack]:
    """The users, orders and inventory services as processes of this test's own, on the session's
    databases, so a test may stop, freeze or kill them without touching the session's stack."""
    stack = Stack(
        ports={name: free_port() for name in (*SERVICES_ONLY, "webhooks", "gateway")},
        env={**service_env(infra), "PYTHONUNBUFFERED": "1", **(env or {})},
        log_dir=log_dir,
        cwd=ROOT,
        workers=(),
    )
    try:
        for name in SERVICES_ONLY:
            stack.start_one(name)
        for name in SERVICES_ONLY:
            stack.wait_ready(90, name)
        yield stack
    finally:
        stack.stop()


@contextlib.asynccontextmanager
async def gateway_on(services: Stack, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process gateway in front of `services` (settings overridden by `overrides`)."""
    settings = gateway_settings(services, aggregate_timeout_seconds=BUDGET, **overrides)
    async with in_process_gateway(settings) as client:
        yield client


@contextlib.contextmanager
def frozen(stack: Stack, name: str) -> Iterator[None]:
    """The process is stopped (SIGSTOP): its socket accepts connections, nothing answers."""
    pid = stack.procs[name].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def dead(stack: Stack, name: str) -> Iterator[None]:
    """The process is killed (its port refuses connections), and started again afterwards."""
    proc = stack.procs[name]
    proc.kill()
    proc.wait()
    try:
        yield
    finally:
        stack.start_one(name)
        stack.wait_ready(90, name)


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of `name` in the Prometheus text `text` with these labels."""
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample != name and not sample.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', sample[len(name) :]))
        if all(found.get(key) == wanted for key, wanted in labels.items()):
            return float(value)
    return None
