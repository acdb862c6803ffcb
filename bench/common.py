"""Helpers for benchmarks: processes, wrk and its Lua scripts, a private Redis key prefix."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import redis
from jose import jwt

ROOT = Path(__file__).resolve().parent.parent
DEV_JWT_SECRET = "dev-jwt-secret-change-me"


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    return path


def bearer(
    scopes: str = "users:read users:write orders:read orders:write",
    plan: str = "enterprise",
    secret: str = DEV_JWT_SECRET,
) -> str:
    now = int(time.time())
    claims = {
        "sub": str(uuid.uuid4()),
        "tid": str(uuid.uuid4()),
        "scope": scopes,
        "plan": plan,
        "role": "admin",
        "iss": "portico",
        "iat": now,
        "exp": now + 3600,
    }
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "portico-1"})


def pinned(command: Sequence[str], cpus: Collection[int] | None) -> list[str]:
    """`command` restricted to `cpus` (with taskset, so that a server's workers inherit it)."""
    if not cpus:
        return list(command)
    return ["taskset", "-c", ",".join(str(c) for c in sorted(cpus)), *command]


class _Tail:
    """Keeps the last lines a process wrote, to explain why it stopped, without storing its whole log."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=40)
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def text(self) -> str:
        return "\n".join(self.lines)


@contextmanager
def server(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    health_url: str,
    cpus: Collection[int] | None = None,
    timeout: float = 60,
    cwd: Path = ROOT,
) -> Iterator[subprocess.Popen[bytes]]:
    """Runs `command` (in `cwd`) until the block ends, once `health_url` answers 200.

    The process leads a session of its own, so stopping it also stops the workers a server forked.
    """
    proc = subprocess.Popen(
        pinned(command, cpus),
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stderr is not None
    tail = _Tail(proc.stderr)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}:\n{tail.text()}")
            try:
                if httpx.get(health_url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{' '.join(command)} did not get ready:\n{tail.text()}")
            time.sleep(0.1)
        yield proc
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    # Workers that outlived their supervisor still belong to the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def process(module: str, *args: str, env: Mapping[str, str], health_url: str) -> Iterator[subprocess.Popen[bytes]]:
    with server([sys.executable, "-m", module, *args], env=env, health_url=health_url) as proc:
        yield proc


@dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    requests: int
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match[1]) * _UNITS_MS[match[2]]


def parse_wrk(out: str) -> WrkResult:
    """The figures of wrk's report (run with `--latency`, which prints the latency percentiles)."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in ", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    if rate is None or total is None or p50 is None or p99 is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        requests_per_second=float(rate[1]),
        requests=int(total[1]),
        p50_ms=_ms(p50[1]),
        p99_ms=_ms(p99[1]),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


def wrk(
    url: str,
    *,
    headers: Mapping[str, str],
    seconds: int,
    connections: int,
    threads: int = 1,
    script: Path | None = None,
    cpus: Collection[int] | None = None,
    strict: bool = True,
    tick: Callable[[], None] | None = None,
    tick_seconds: float = 5,
) -> WrkResult:
    """What wrk measured; `strict` fails the run if any request did not answer 2xx. `tick` is called
    as the run starts and every `tick_seconds` while it lasts (to sample something under load)."""
    # A request still unanswered after the timeout counts as an error rather than vanishing from the percentiles.
    command = [require_wrk(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    with subprocess.Popen(
        pinned([*command, url], cpus), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        while True:
            if tick is not None:
                tick()
            try:
                out, err = proc.communicate(timeout=tick_seconds if tick is not None else None)
                break
            except subprocess.TimeoutExpired:
                continue
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{err}")
    result = parse_wrk(out)
    if strict and result.non_2xx:
        raise RuntimeError(f"non-2xx answers during the run:\n{out}")
    return result


# Keys are unique across threads and across runs of the same script file: each thread draws a random
# prefix when it starts, so a warm-up run and the measured run never send the same key twice.
_POST_SCRIPT = """
function init(args)
  local f = io.open("/dev/urandom", "rb")
  local bytes = f:read(8)
  f:close()
  prefix = (bytes:gsub(".", function(c) return string.format("%02x", string.byte(c)) end))
  counter = 0
end
function request()
  counter = counter + 1
  if KEYED then
    wrk.headers["Idempotency-Key"] = prefix .. "-" .. counter
  end
  return wrk.format()
end
"""


def post_script(directory: Path, *, keyed: bool, headers: Mapping[str, str], body: str) -> Path:
    """A wrk script that POSTs `body`, with a new Idempotency-Key on every request when `keyed`."""
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body)}", f"KEYED = {'true' if keyed else 'false'}"]
    lines += [f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}" for name, value in headers.items()]
    path = directory / f"post-{uuid.uuid4().hex[:8]}.lua"
    path.write_text("\n".join(lines) + _POST_SCRIPT)
    return path


@contextmanager
def redis_prefix(url: str) -> Iterator[str]:
    """A key prefix of this run's own; its keys are removed at the end (never the rest of the server)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        sys.exit(f"Redis is not reachable at {url} ({exc}); start it or pass --redis-url")
    prefix = f"portico-bench-{uuid.uuid4().hex[:8]}:"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        client.close()


@contextlib.asynccontextmanager
async def migrated_database(admin_dsn: str, service: str) -> AsyncIterator[str]:
    """A PostgreSQL database of the run's own for `service`, migrated to head; its asyncpg URL.
    Dropped afterwards."""
    import asyncpg

    from shared.migrations import upgrade

    name = f"portico_bench_{service}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    url = f"{admin_dsn.rpartition('/')[0]}/{name}".replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        await asyncio.to_thread(upgrade, ROOT / "services" / service, url)
        yield url
    finally:
        conn = await asyncpg.connect(admin_dsn)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()
