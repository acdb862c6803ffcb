"""The gateway under overload: open-loop load at 1x, 2x and 3x the measured capacity of one worker,
with admission control off and on, in one run.

    .venv/bin/python -m bench.overload [--seconds 10] [--multiples 1,2,3]
    .venv/bin/python -m bench.overload --micro          # the admission step's cost, in-process
    .venv/bin/python -m bench.overload --refusals       # a refusal's cost on a real socket, beside nginx's

Needs wrk (capacity), nginx (the upstream) and Redis (default redis://127.0.0.1:6379/0; keys under a
prefix of this run's own, removed at the end).

The rig: one gateway worker (`python -m gateway serve`, its full default pipeline, Redis rate limits
with quotas no run reaches) pinned to CPU 0, in front of nginx answering a static JSON document
(`GET /v1/users/me`), pinned with this process to the other CPUs. For each mode (admission off:
`GATEWAY_ADMISSION_ENABLED=false`; on: the defaults) a fresh gateway is started and its capacity is
what wrk measures, closed-loop, with 32 connections of the enterprise plan, right before its load (a
shared machine's speed drifts within minutes). Then it gets open-loop load: requests are sent on a fixed schedule (every
1/rate s, whatever the answers do), each on an idle keep-alive connection (a new one when none is
idle), and each request's latency is counted from the moment it was due, so a gateway that falls
behind is charged for the wait (no coordinated omission). The callers are three tenants, one per
plan, sending 50% (free), 30% (pro) and 20% (enterprise) of the requests.

Reported per mode and multiple: goodput (2xx answers per second), its ratio to the 1x goodput, p50
and p99 of the admitted (2xx) requests, the share of each plan's requests answered 2xx, 503s, other
failures (timeouts after 5 s, resets, other statuses), the worker's peak RSS, the client's own lag
(p99 of how late a request was written after it was due: a run whose client could not keep up says
so), the worker's concurrency limit and requests in progress as its /metrics gave them every
0.2 s, and how busy the gateway's CPU and the others (the client, nginx; Redis runs on either)
were. After the 3x phase, load drops to 0.8x at once; the recovery line gives, second by second,
the success share and p99 of that lighter load, beside the same load before any overload (what
normal is on that machine). `--variant 'NAME:SETTING=VALUE;...'` adds a mode with admission on and
other settings, run in the same session as the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import sys
import threading
import time
import timeit
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import httpx
import uvloop

from bench.common import bearer, redis_prefix, require_wrk, server, wrk
from bench.gateway import rss_mib, table, worker_pid
from bench.nginx import nginx, require_nginx
from scripts.devstack import free_port

if TYPE_CHECKING:
    from gateway.settings import GatewaySettings

PLANS = ("free", "pro", "enterprise")
# Of every 10 requests: 5 free, 3 pro, 2 enterprise.
MIX = ("free",) * 5 + ("pro",) * 3 + ("enterprise",) * 2
PATH = "/v1/users/me"
TIMEOUT = 5.0
GATEWAY_CPUS = {0}


# --- the open-loop client


@dataclass
class Outcome:
    plan: str
    status: int  # 0: no answer (timeout, reset)
    latency: float
    done: float


@dataclass
class Load:
    """What one open-loop phase sent and got."""

    rate: float
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    # How late each request was written, after it was due: the client's own lag, which the latencies
    # include (a client that cannot keep up measures itself).
    lags: list[float] = field(default_factory=list)

    def of(self, plan: str | None = None, since: float = 0.0, until: float = float("inf")) -> list[Outcome]:
        return [o for o in self.outcomes if (plan is None or o.plan == plan) and since <= o.done < until]


class Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, the answer parsed just enough (status line
    and Content-Length)."""

    def __init__(self, client: OpenLoop) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy: tuple[str, float] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are asyncio transports in all but their classes.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, plan: str, due: float) -> None:
        assert self.transport is not None
        self.busy = (plan, due)
        self.transport.write(self.client.requests[plan])

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.busy is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])
            if len(self.buffer) < end + 4 + length:
                return
            status = int(head[9:12])
            del self.buffer[: end + 4 + length]
            plan, due = self.busy
            self.busy = None
            self.client.answered(self, plan, due, status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.busy is not None:
            plan, due = self.busy
            self.busy = None
            self.client.answered(self, plan, due, 0)


class OpenLoop:
    def __init__(self, host: str, port: int, tokens: dict[str, str], max_connections: int = 2000) -> None:
        self.host, self.port = host, port
        self.requests = {
            plan: (f"GET {PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n").encode()
            for plan, token in tokens.items()
        }
        self.idle: list[Connection] = []
        self.opened = 0
        self.max_connections = max_connections
        self.load: Load | None = None
        self.pending: dict[Connection, None] = {}

    async def _open(self) -> Connection:
        loop = asyncio.get_running_loop()
        self.opened += 1
        _, connection = await loop.create_connection(lambda: Connection(self), self.host, self.port)
        return connection

    async def warm(self, count: int) -> None:
        self.idle += await asyncio.gather(*(self._open() for _ in range(count)))

    def close(self) -> None:
        """Closes the idle connections (after a run, none is busy)."""
        for connection in self.idle:
            if connection.transport is not None:
                connection.transport.close()
        self.opened -= len(self.idle)
        self.idle.clear()

    def answered(self, connection: Connection, plan: str, due: float, status: int) -> None:
        now = time.monotonic()
        if self.load is not None:
            self.load.outcomes.append(Outcome(plan, status, now - due, now))
        self.pending.pop(connection, None)
        if not connection.closed and status:
            self.idle.append(connection)
        else:
            self.opened -= 1

    async def _send_new(self, plan: str, due: float) -> None:
        try:
            connection = await self._open()
        except OSError:
            self.opened -= 1
            if self.load is not None:
                now = time.monotonic()
                self.load.outcomes.append(Outcome(plan, 0, now - due, now))
            return
        connection.send(plan, due)
        self.pending[connection] = None

    async def run(self, rate: float, seconds: float) -> Load:
        """Sends `rate` requests a second for `seconds` on a fixed schedule; waits for the answers (at
        most `TIMEOUT` after the last was due)."""
        load = self.load = Load(rate, seconds)
        interval = 1.0 / rate
        start = time.monotonic()
        total = int(rate * seconds)
        sent = 0
        tasks: set[asyncio.Task[None]] = set()
        while sent < total:
            now = time.monotonic()
            while sent < total and start + sent * interval <= now:
                due = start + sent * interval
                plan = MIX[sent % len(MIX)]
                sent += 1
                while self.idle and self.idle[-1].closed:
                    # Closed by the server while idle (its keep-alive timeout): no longer counted.
                    self.idle.pop()
                    self.opened -= 1
                if self.idle:
                    connection = self.idle.pop()
                    connection.send(plan, due)
                    self.pending[connection] = None
                    load.lags.append(now - due)
                elif self.opened < self.max_connections:
                    task = asyncio.ensure_future(self._send_new(plan, due))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                else:
                    load.outcomes.append(Outcome(plan, 0, 0.0, now))
            await asyncio.sleep(max(0.0, start + sent * interval - time.monotonic()))
        end = start + seconds + TIMEOUT
        while (self.pending or tasks) and time.monotonic() < end:
            await asyncio.sleep(0.01)
        now = time.monotonic()
        for connection in list(self.pending):
            # No answer within the timeout: counted as failed, and the connection is dropped.
            plan, due = connection.busy or ("free", now)
            connection.busy = None
            load.outcomes.append(Outcome(plan, 0, now - due, now))
            assert connection.transport is not None
            connection.transport.abort()
            self.opened -= 1
        self.pending.clear()
        self.load = None
        return load


# --- the rig


@contextlib.contextmanager
def gateway(
    port: int, upstream: int, redis_url: str, prefix: str, secret: str, admission: bool, extra: dict[str, str]
) -> Iterator[int]:
    env = {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        **{
            f"GATEWAY_{name}_URL": f"http://127.0.0.1:{upstream}"
            for name in ("USERS", "ORDERS", "INVENTORY", "WEBHOOKS")
        },
        "GATEWAY_JWT_SECRET": secret,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_KEY_PREFIX": prefix,
        # Quotas no run reaches: what sheds here is admission, not the rate limit.
        **{f"GATEWAY_RATE_LIMIT_{plan.upper()}": "1000000000/60s" for plan in PLANS},
        "GATEWAY_ACCESS_LOG": "false",
        "GATEWAY_ADMISSION_ENABLED": "true" if admission else "false",
        "OTEL_TRACES_EXPORTER": "none",
        **(extra if admission else {}),
    }
    command = [sys.executable, "-m", "gateway", "serve"]
    with server(command, env=env, health_url=f"http://127.0.0.1:{port}/health/live", cpus=GATEWAY_CPUS) as proc:
        yield proc.pid


def cpu_times() -> dict[int, tuple[int, int]]:
    """Each CPU's (total, idle) jiffies so far, from /proc/stat."""
    times = {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                jiffies = [int(value) for value in values]
                times[int(name[3:])] = (sum(jiffies), jiffies[3] + jiffies[4])
    return times


class Sampler:
    """The worker's RSS and how busy the CPUs were, sampled every 0.2 s in a thread, kept by phase."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid = pid
        self.port = port
        self.phase = "start"
        self.peaks: dict[str, float] = {}
        # Per phase, the busy share of the gateway's CPUs and of the others (the client, nginx and
        # Redis): a rig whose own CPU is full slows the gateway's upstream and its client down.
        self.busy: dict[str, dict[str, list[float]]] = {}
        # The worker's concurrency limit and requests in progress, read from /metrics at each sample.
        self.limits: dict[str, list[float]] = {}
        self.in_progress: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        before = cpu_times()
        while not self._stop.wait(0.2):
            with contextlib.suppress(OSError):
                rss = rss_mib(self.pid)
                self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)
            now = cpu_times()
            busy = self.busy.setdefault(self.phase, {"gateway": [], "others": []})
            for group in ("gateway", "others"):
                cpus = [cpu for cpu in now if (cpu in GATEWAY_CPUS) == (group == "gateway")]
                total = sum(now[cpu][0] - before[cpu][0] for cpu in cpus)
                idle = sum(now[cpu][1] - before[cpu][1] for cpu in cpus)
                if total > 0:
                    busy[group].append(1 - idle / total)
            before = now
            with contextlib.suppress(httpx.HTTPError):
                figures = admission_values(self.port)
                if figures.get("portico_concurrency_limit"):  # 0: admission is off
                    self.limits.setdefault(self.phase, []).append(figures["portico_concurrency_limit"])
                    self.in_progress.setdefault(self.phase, []).append(figures["portico_requests_in_progress"])

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Phase:
    mode: str
    multiple: float
    load: Load
    rss_mib: float
    limits: list[float]
    in_progress: list[float]
    busy: dict[str, list[float]]


def summarise(phases: list[Phase]) -> None:
    base: dict[str, float] = {}
    base_p99: dict[str, float] = {}
    lines = []
    for phase in phases:
        load = phase.load
        ok = [o for o in load.outcomes if 200 <= o.status < 300]
        shed = sum(1 for o in load.outcomes if o.status == 503)
        failed = len(load.outcomes) - len(ok) - shed
        goodput = len(ok) / load.seconds
        p99 = p([o.latency for o in ok], 0.99) * 1000
        if phase.multiple == 1:
            base[phase.mode], base_p99[phase.mode] = goodput, p99
        success = {}
        for plan in PLANS:
            mine = load.of(plan)
            success[plan] = sum(1 for o in mine if 200 <= o.status < 300) / len(mine) if mine else float("nan")
        lines.append(
            [
                phase.mode,
                f"{phase.multiple:g}x ({load.rate:.0f}/s)",
                f"{goodput:.0f}",
                f"{goodput / base[phase.mode]:.0%}" if phase.mode in base else "-",
                f"{p([o.latency for o in ok], 0.5) * 1000:.1f}",
                f"{p99:.1f}",
                f"{p99 / base_p99[phase.mode]:.1f}x" if phase.mode in base_p99 else "-",
                *(f"{success[plan]:.1%}" for plan in PLANS),
                str(shed),
                str(failed),
                f"{phase.rss_mib:.0f}",
                f"{p(load.lags, 0.99) * 1000:.1f}",
                f"{p(phase.limits, 0.5):.0f} ({p(phase.limits, 0):.0f}-{p(phase.limits, 1):.0f})"
                if phase.limits
                else "-",
                f"{p(phase.in_progress, 0.5):.0f} / {p(phase.in_progress, 1):.0f}" if phase.in_progress else "-",
                " / ".join(f"{p(phase.busy.get(group, []), 0.5):.0%}" for group in ("gateway", "others")),
            ]
        )
    columns = ["admission", "offered", "goodput/s", "vs 1x", "p50 ms", "p99 ms", "p99 vs 1x"]
    columns += [f"{plan} ok" for plan in PLANS] + ["503", "failed", "RSS max MiB"]
    columns += ["client lag p99 ms", "limit median (range)", "in progress median / max"]
    columns += ["CPU busy, median: gateway's / others'"]
    table(columns, lines)


def recovery(mode: str, load: Load, started: float) -> list[str]:
    cells = []
    for second in range(int(load.seconds)):
        window = [o for o in load.outcomes if started + second <= o.done < started + second + 1]
        ok = [o.latency for o in window if 200 <= o.status < 300]
        share = len(ok) / len(window) if window else float("nan")
        cells.append(f"{share:.0%} / {p(ok, 0.99) * 1000:.0f} ms")
    return [mode, *cells]


async def measure(args: argparse.Namespace) -> None:
    require_wrk()
    require_nginx()
    secret = "bench-" + os.urandom(16).hex()
    tokens = {plan: bearer(plan=plan, secret=secret) for plan in PLANS}
    others = set(range(os.cpu_count() or 1)) - GATEWAY_CPUS or GATEWAY_CPUS
    os.sched_setaffinity(0, others)
    upstream = free_port()
    phases: list[Phase] = []
    recoveries: list[list[str]] = []
    shed_lines: list[str] = []
    with redis_prefix(args.redis_url) as prefix, nginx(upstream, cpus=others):
        modes = [(mode, mode == "on", args.gateway_env) for mode in ("off", "on") if mode in args.modes]
        modes += [(name, True, {**args.gateway_env, **env}) for name, env in args.variants]
        for mode, admission, env in modes:
            port = free_port()
            with gateway(port, upstream, args.redis_url, prefix, secret, admission, env) as pid:
                # Measured anew for each mode, right before its load: a shared machine's speed drifts
                # within minutes. Enterprise requests, which the limit's defaults never refuse at 32.
                url = f"http://127.0.0.1:{port}{PATH}"
                headers = {"Authorization": f"Bearer {tokens['enterprise']}"}
                wrk(url, headers=headers, seconds=2, connections=32, cpus=others, strict=False)
                capacity = wrk(
                    url, headers=headers, seconds=args.capacity_seconds, connections=32, cpus=others, strict=False
                ).requests_per_second
                print(f"admission {mode}: capacity of the worker (wrk -c32, closed loop): {capacity:.0f} req/s")
                worker = worker_pid(pid)
                client = OpenLoop("127.0.0.1", port, tokens)
                await client.warm(64)
                await client.run(capacity * 0.5, 2)  # warm-up: caches, pools, the limit's first windows
                with Sampler(worker, port) as sampler:
                    # What normal looks like at the load of the recovery phase, before any overload.
                    sampler.phase = "before"
                    started = time.monotonic()
                    load = await client.run(capacity * 0.8, args.recovery_seconds)
                    recoveries.append(recovery(f"{mode}, before the overload", load, started))
                    for multiple in args.multiples:
                        sampler.phase = f"{multiple}"
                        load = await client.run(capacity * multiple, args.seconds)
                        key = f"{multiple}"
                        phases.append(
                            Phase(
                                mode,
                                multiple,
                                load,
                                sampler.peaks.get(key, 0.0),
                                sampler.limits.get(key, []),
                                sampler.in_progress.get(key, []),
                                sampler.busy.get(key, {}),
                            )
                        )
                        print(f"  admission {mode}, {multiple:g}x: {len(load.outcomes)} answers", flush=True)
                    sampler.phase = "recovery"
                    started = time.monotonic()
                    load = await client.run(capacity * 0.8, args.recovery_seconds)
                    recoveries.append(recovery(f"{mode}, after {args.multiples[-1]:g}x", load, started))
                if admission:
                    shed_lines += [f"# {mode}", *admission_figures(port)]
                client.close()
    print(
        f"\n{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs (shared with other work: figures "
        f"from a loaded machine); one gateway worker on CPU {sorted(GATEWAY_CPUS)}, nginx and the client on "
        f"{sorted(others)}; {args.seconds} s per phase; mix 50% free, 30% pro, 20% enterprise\n"
    )
    summarise(phases)
    print(
        "\nAt 0.8x, before the overload and after it (the load drops from the last multiple at once): success "
        "share / p99 of the admitted, second by second\n"
    )
    table(["admission", *(f"{s + 1} s" for s in range(int(args.recovery_seconds)))], recoveries)
    print("\nThe gateway's admission metrics at the end of the run (admission on)\n")
    print("```text\n" + "\n".join(shed_lines) + "\n```")


def admission_figures(port: int) -> list[str]:
    """The admission metrics the gateway serves (`/metrics`)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    wanted = ("portico_concurrency_limit ", "portico_requests_in_progress ", "portico_requests_shed_total{")
    return [line for line in text.splitlines() if line.startswith(wanted)]


def admission_values(port: int) -> dict[str, float]:
    """The gateway's unlabelled admission gauges, by name."""
    return {
        name: float(value)
        for name, value in (line.split(" ", 1) for line in admission_figures(port) if "{" not in line)
    }


# --- the admission step's own cost


def micro() -> None:
    """The cost of what admission adds to a request, in-process: the limit's enter and leave, the
    caller's rank from a verified token, the deadline set for the calls, and the disconnect watcher."""
    from prometheus_client import CollectorRegistry

    from gateway.edge.admission import caller_rank
    from gateway.edge.authentication import Authenticator, JwtVerifier
    from gateway.settings import GatewaySettings
    from shared.admission import AdaptiveLimit, AdmissionMetrics, LimitSettings, deadline_var, format_deadline
    from shared.contract import Identity

    settings = GatewaySettings()
    gate = AdaptiveLimit(
        LimitSettings.of(settings), AdmissionMetrics(CollectorRegistry()), settings.admission_plan_shares
    )
    perf = time.perf_counter

    def enter_leave() -> None:
        gate.enter(3)
        gate.leave(perf())

    token = bearer(plan="pro")
    verifier = JwtVerifier(settings)
    verifier.verified.put(token, time.time() + 3600, Identity("bench", tenant_id="bench", plan="pro"))

    class Auth:
        # The authenticator's own lookup, which for a bearer token reads the verified tokens alone.
        tokens = verifier
        known_plan = Authenticator.known_plan

    raw = [(b"host", b"x"), (b"authorization", f"Bearer {token}".encode())]

    def rank() -> None:
        caller_rank(raw, Auth())  # type: ignore[arg-type]  # a stand-in Authenticator: `tokens` is all it uses

    def deadline() -> None:
        reset = deadline_var.set(time.time() + 10.0)
        format_deadline(deadline_var.get() or 0.0)
        deadline_var.reset(reset)

    async def watcher_cost(n: int) -> float:
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def receive() -> dict[str, str]:
            await never
            return {}

        started = perf()
        for _ in range(n):
            task = asyncio.ensure_future(receive())
            await asyncio.sleep(0)  # the watcher starts waiting, as it would while the call runs
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return (perf() - started) / n

    n = 200_000
    rows = []
    for name, fn in (
        ("limit: enter + leave", enter_leave),
        ("caller's rank (verified token)", rank),
        ("deadline set + format + reset", deadline),
    ):
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n
        rows.append([name, f"{best * 1e6:.2f} µs"])
    watcher = min(asyncio.run(watcher_cost(20_000)) for _ in range(3))
    rows.append(["disconnect watcher: task, start, cancel (forwarded routes)", f"{watcher * 1e6:.2f} µs"])
    refused = min(asyncio.run(refusal_cost(5_000)) for _ in range(3))
    rows.append(
        ["a refused request through the whole app (503 OVERLOADED; no HTTP parsing)", f"{refused * 1e6:.1f} µs"]
    )
    early, passed = min(asyncio.run(protocol_costs(20_000)) for _ in range(3))
    rows.append(["an admitted request's slot, taken and given back by the server's protocol", f"{passed * 1e6:.2f} µs"])
    rows.append(
        ["a refused request in the server's protocol (parsing, rank, the 503 written)", f"{early * 1e6:.1f} µs"]
    )
    print(
        f"\n{datetime.date.today()}, {platform.machine()}, Python {platform.python_version()}, "
        "best of 5 (loaded machine)\n"
    )
    table(["step", "per request"], rows)


def one_slot_settings() -> GatewaySettings:
    """A gateway in-process with admission on, a limit of one and no queue, and services nowhere."""
    from gateway.settings import GatewaySettings

    unused = f"http://127.0.0.1:{free_port()}"
    return GatewaySettings(
        access_log=False,
        users_url=unused,
        orders_url=unused,
        inventory_url=unused,
        webhooks_url=unused,
        admission_enabled=True,
        admission_min_limit=1,
        admission_initial_limit=1,
        admission_max_limit=1,
        admission_queue_size=0,
    )


async def refusal_cost(n: int) -> float:
    """Seconds per request the gateway's app takes to refuse one (observability, route match, admission,
    the problem+json answer), driven in-process: what a shed request costs besides HTTP parsing."""
    from gateway.app import create_app
    from gateway.edge.pipeline import Edge

    settings = one_slot_settings()
    app = create_app(settings)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"authorization", f"Bearer {bearer(plan='free')}".encode())],
        "state": {},
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 8000),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, object]:
        # As a server does: the (empty) body, then nothing until the client leaves. Only the first
        # request, admitted, reads it (its call to a users service that is not there fails at once).
        await asyncio.sleep(0)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(message["status"]))

    async with app.router.lifespan_context(app) as state:
        scope["state"] = dict(state or {})
        await app(dict(scope), receive, send)  # builds the middleware stack
        node = app.middleware_stack
        while node is not None and not isinstance(node, Edge):
            node = getattr(node, "app", None)
        assert node is not None
        assert node.gate is not None
        node.gate.in_flight = 1  # the one slot is taken: every request is refused
        started = time.perf_counter()
        for _ in range(n):
            await app(dict(scope), receive, send)
        elapsed = (time.perf_counter() - started) / n
        node.gate.in_flight = 0
    assert statuses[-1] == 503, statuses[-1]
    return elapsed


class _Transport(asyncio.Transport):
    """Takes what the protocol writes, as a connection whose client reads everything."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 8000) if name in {"peername", "sockname"} else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def protocol_costs(n: int) -> tuple[float, float]:
    """Seconds per request, in the gateway's server protocol with admission on: a keep-alive request
    head (five headers, a token of the free plan) parsed, ranked and answered 503 by the shedder, as
    under overload; and an admitted request's slot taken and given back, as every request pays."""
    from uvicorn import Config
    from uvicorn.server import ServerState

    from gateway.app import create_app
    from shared.admission import SHEDDER_KEY
    from shared.serving import serving_protocol

    settings = one_slot_settings()
    app = create_app(settings)
    token = bearer(plan="free")
    head = (
        f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: bench\r\nAccept: */*\r\n"
        f"Authorization: Bearer {token}\r\nX-Client: overload\r\n\r\n"
    ).encode()
    async with app.router.lifespan_context(app) as state:
        app_state = dict(state or {})
        shedder = app_state[SHEDDER_KEY]
        protocol = serving_protocol(settings)(
            Config(app, log_config=None), ServerState(), app_state, _loop=asyncio.get_running_loop()
        )
        transport = _Transport()
        protocol.connection_made(transport)
        shedder.limit.in_flight = 1  # the one slot is taken: every request is refused
        started = time.perf_counter()
        for _ in range(n):
            protocol.data_received(head)
        refused = (time.perf_counter() - started) / n
        assert transport.written > n * 100, transport.written
        shedder.limit.in_flight = 0
        started = time.perf_counter()
        for _ in range(n):
            shedder.admit(b"GET", PATH, [])
            shedder.release(time.perf_counter())
        passed = (time.perf_counter() - started) / n
        protocol.connection_lost(None)
    return refused, passed


# The open-loop rates `--refusals` measures at: about the arrivals a second at 1x and at 3x.
OPEN_LOOP_RATES = (2000.0, 5000.0)


def refusal_rate(args: argparse.Namespace) -> None:
    """What a refusal in the server's protocol costs on a real socket: one worker whose limit is one,
    every request of the free plan; CPU per request under wrk (32 and 256 keep-alive connections,
    requests in bursts) and under the open-loop client (requests one at a time, as in the overload
    phases). Then what nginx spends answering the same requests from the same client: what the
    kernel and a server written in C cost per request on this machine, the floor of any refusal."""
    require_wrk()
    require_nginx()
    from bench.edge import cpu_seconds

    secret = "bench-" + os.urandom(16).hex()
    one = {f"GATEWAY_ADMISSION_{name}_LIMIT": "1" for name in ("MIN", "INITIAL", "MAX")}
    others = set(range(os.cpu_count() or 1)) - GATEWAY_CPUS or GATEWAY_CPUS
    os.sched_setaffinity(0, others)
    tokens = {plan: bearer(plan="free", secret=secret) for plan in PLANS}
    rows = []
    upstream = free_port()
    with redis_prefix(args.redis_url) as prefix, nginx(upstream, cpus=others):
        port = free_port()
        with gateway(port, upstream, args.redis_url, prefix, secret, True, one) as pid:
            worker = worker_pid(pid)
            url = f"http://127.0.0.1:{port}{PATH}"
            headers = {"Authorization": f"Bearer {tokens['free']}"}
            for connections in (32, 256):
                wrk(url, headers=headers, seconds=2, connections=connections, cpus=others, strict=False)
                before, started = cpu_seconds(worker), time.monotonic()
                result = wrk(url, headers=headers, seconds=5, connections=connections, cpus=others, strict=False)
                used, elapsed = cpu_seconds(worker) - before, time.monotonic() - started
                rows.append(
                    cost_row(
                        "gateway (refuses)",
                        f"wrk, {connections} connections",
                        result.requests,
                        result.non_2xx,
                        used,
                        elapsed,
                    )
                )
            # With a limit of one, a request arriving while none is in progress is answered: each
            # open-loop row mixes answers and refusals, and the two rows together give the cost of each.
            phases = [open_loop_phase(port, worker, tokens, rate) for rate in OPEN_LOOP_RATES]
            rows += [cost_row("gateway (refuses)", *phase) for phase in phases]
    floor = free_port()
    with nginx(floor, cpus=GATEWAY_CPUS) as pid:
        nginx_worker = worker_pid(pid)
        rows += [cost_row("nginx (answers)", *open_loop_phase(floor, nginx_worker, tokens, r)) for r in OPEN_LOOP_RATES]
    table(["server", "load", "requests/s", "refused", "worker CPU", "CPU per request"], rows)
    refusal, answer = solve_costs(phases)
    print(
        f"\ngateway under the open-loop client, solved from its two rows: a refusal {refusal * 1e6:.1f} µs, "
        f"an answer {answer * 1e6:.0f} µs"
    )


def cost_row(server: str, load: str, requests: int, refused: int, used: float, elapsed: float) -> list[str]:
    return [
        server,
        load,
        f"{requests / elapsed:.0f}",
        f"{refused / max(1, requests):.1%}",
        f"{used / elapsed:.0%}",
        f"{used / max(1, requests) * 1e6:.1f} µs",
    ]


def open_loop_phase(port: int, pid: int, tokens: dict[str, str], rate: float) -> tuple[str, int, int, float, float]:
    """Five seconds of open-loop load at `rate` on 127.0.0.1:`port`: the load, how many requests, how
    many refused, and the CPU seconds process `pid` spent in the elapsed seconds."""
    from bench.edge import cpu_seconds

    async def run() -> tuple[Load, float, float]:
        client = OpenLoop("127.0.0.1", port, tokens)
        await client.warm(64)
        before, started = cpu_seconds(pid), time.monotonic()
        load = await client.run(rate, 5.0)
        used, elapsed = cpu_seconds(pid) - before, time.monotonic() - started
        client.close()
        return load, used, elapsed

    load, used, elapsed = uvloop.run(run())
    refused = sum(1 for outcome in load.outcomes if outcome.status == 503)
    return f"open loop, {rate:.0f}/s", len(load.outcomes), refused, used, elapsed


def solve_costs(phases: list[tuple[str, int, int, float, float]]) -> tuple[float, float]:
    """The CPU seconds of one refusal and of one answer, from two phases that mix them in different
    proportions (each phase: CPU used = answers * answer + refusals * refusal)."""
    (_, n1, r1, cpu1, _), (_, n2, r2, cpu2, _) = phases[:2]
    a1, a2 = n1 - r1, n2 - r2
    refusal = (cpu2 * a1 - cpu1 * a2) / (r2 * a1 - r1 * a2)
    return refusal, (cpu1 - r1 * refusal) / a1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--micro", action="store_true", help="only the admission step's cost, in-process")
    parser.add_argument(
        "--refusals",
        action="store_true",
        help="only what a refusal in the server's protocol costs on a real socket, beside what nginx spends",
    )
    parser.add_argument("--seconds", type=float, default=10, help="seconds of each load phase")
    parser.add_argument("--capacity-seconds", type=int, default=5)
    parser.add_argument("--recovery-seconds", type=float, default=5)
    parser.add_argument("--multiples", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 2.0, 3.0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--modes", default="off,on", help="admission off, on, or both (default)")
    parser.add_argument(
        "--set",
        dest="gateway_env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the gateway with admission on (GATEWAY_ADMISSION_QUEUE_SIZE=0, ...); repeatable",
    )
    parser.add_argument(
        "--variant",
        dest="variants",
        action="append",
        default=[],
        metavar="NAME:SETTING=VALUE[;SETTING=VALUE]",
        help="one more mode, run after the others: admission on with these settings (and --set's); repeatable",
    )
    args = parser.parse_args()
    args.modes = args.modes.split(",")
    args.gateway_env = dict(item.split("=", 1) for item in args.gateway_env)
    args.variants = [
        (name, dict(item.split("=", 1) for item in settings.split(";")))
        for name, settings in (variant.split(":", 1) for variant in args.variants)
    ]
    if args.micro:
        micro()
        return
    if args.refusals:
        refusal_rate(args)
        return
    # The client runs on uvloop, as the gateway does: the less CPU it needs per request, the closer
    # it keeps to its schedule on a shared CPU (its lag is reported with each phase).
    uvloop.run(measure(args))


if __name__ == "__main__":
    main()
