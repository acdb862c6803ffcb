"""Portico's gateway against the gateways a Python team would otherwise run, on one machine, in one run.

    .venv/bin/python -m bench.gateway [--seconds 10] [--rounds 5] [--server uvicorn,granian,...]
    .venv/bin/python -m bench.gateway --keyed-post
    .venv/bin/python -m bench.gateway --scaling
    .venv/bin/python -m bench.gateway --memory [--memory-seconds 600] [--load 0.7]

Needs wrk, nginx and a Redis server (default redis://127.0.0.1:6379/0; keys go under a prefix of
this run's own and are removed at the end), and the `bench` extra (`pip install -e '.[dev,bench]'`).

Every gateway proxies `GET /v1/users/me` (with the same JWT) to ONE static upstream, which answers
every request with the same JSON document: `--upstream python` (default, `bench/static_upstream.py`,
one uvicorn worker) or `--upstream nginx`. An OTLP/HTTP receiver (`bench/otlp_sink.py`) takes the
spans of every gateway that exports them. All gateways run side by side, one worker each:

- textbook: FastAPI, one pooled `httpx.AsyncClient`, forwarding headers, answering `response.json()`
- assembled: python-jose JWT dependency, slowapi on Redis, prometheus-fastapi-instrumentator,
  OpenTelemetry FastAPI + httpx instrumentation, the same pooled client (`bench/comparators.py`)
- aiohttp: a bare FastAPI route proxying through a pooled aiohttp session
- nginx: nginx as a reverse proxy
- Portico: `python -m gateway` with its full default pipeline (JWT, Redis rate limit, idempotency,
  caching and security headers, internal identity, metrics, JSON access log, tracing exported to the
  receiver), under each ASGI server named in `--server`

Rounds are interleaved (each round measures every row, starting one row further on each time) so that
drift on the machine hits every row alike. The table gives the median req/s of the rounds, the ratios
to the textbook gateway and to the bare aiohttp proxy, and the median of the rounds' p50 and p99
latencies as wrk measured them (wrk waits for each answer before its connection sends again, so under
saturation these are latencies at that concurrency, not of an open-loop arrival rate).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import (
    WrkResult,
    bearer,
    post_script,
    redis_prefix,
    require_wrk,
    server,
    wrk,
)
from bench.nginx import nginx, require_nginx
from scripts.devstack import free_port

SERVERS = ("uvicorn", "uvicorn-httptools", "granian", "gunicorn")
GATEWAYS = ("textbook", "assembled", "lean", "aiohttp", "nginx", "portico")
FACTORY = "bench.portico_asgi:app"
BOUNDED_HTTP = "shared.serving:BoundedHttpToolsProtocol"
# What `python -m gateway serve` gives uvicorn (GATEWAY_SERVER_KEEP_ALIVE_SECONDS and its graceful
# shutdown), so that every server is set up alike.
KEEP_ALIVE_SECONDS = "30"
GRACEFUL_SECONDS = "10"
USER_BODY = json.dumps({"email": "bench@example.com", "password": "correct-horse-9", "role": "member"})


@dataclass
class Rig:
    """What every gateway in a run shares."""

    upstream_url: str
    upstream_pid: int
    sink_url: str
    sink_pid: int
    redis_url: str
    redis_prefix: str
    jwt_secret: str
    token: str
    scratch: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Row:
    name: str
    url: str
    headers: Mapping[str, str]
    pid: int = 0
    script: Path | None = None
    # Where wrk, the upstream and the span receiver run while this row is measured (--scaling).
    load_cpus: Collection[int] | None = None
    results: list[WrkResult] = field(default_factory=list)

    def median(self, figure: Callable[[WrkResult], float]) -> float:
        return statistics.median(figure(r) for r in self.results)

    @property
    def rate(self) -> float:
        return self.median(lambda r: r.requests_per_second)

    @property
    def rounds(self) -> str:
        return ", ".join(f"{r.requests_per_second:.0f}" for r in self.results)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.results)


# --- starting the gateways


def portico_env(rig: Rig, port: int) -> dict[str, str]:
    return {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        **{f"GATEWAY_{name}_URL": rig.upstream_url for name in ("USERS", "ORDERS", "INVENTORY", "WEBHOOKS")},
        "GATEWAY_JWT_SECRET": rig.jwt_secret,
        "GATEWAY_REDIS_URL": rig.redis_url,
        "GATEWAY_REDIS_KEY_PREFIX": rig.redis_prefix,
        # The token's plan; a quota no run reaches, so the rows measure counting, not refusing.
        "GATEWAY_RATE_LIMIT_ENTERPRISE": "1000000000/60s",
        "OTEL_EXPORTER_OTLP_ENDPOINT": rig.sink_url,
    }


def portico_command(name: str, port: int, workers: int) -> list[str]:
    """The command that serves the gateway under the ASGI server `name` with `workers` workers."""
    python = sys.executable
    if name == "uvicorn" and workers == 1:
        return [python, "-m", "gateway", "serve"]
    if name in ("uvicorn", "uvicorn-httptools"):
        command = [python, "-m", "uvicorn", FACTORY, "--factory", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--workers", str(workers), "--no-access-log", "--no-proxy-headers", "--log-level", "warning"]
        command += ["--timeout-keep-alive", KEEP_ALIVE_SECONDS, "--timeout-graceful-shutdown", GRACEFUL_SECONDS]
        # The project's httptools protocol, with the default limits on request heads, as the CLI serves.
        command += ["--http", BOUNDED_HTTP]
        if name == "uvicorn-httptools":
            command += ["--loop", "uvloop"]
        return command
    if name == "granian":
        command = [python, "-m", "granian", "--interface", "asgi", "--factory", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--workers", str(workers), "--no-ws", "--log-level", "warning"]
        return [*command, FACTORY]
    if name == "gunicorn" and workers > 1:
        # As production runs it: the CLI's gunicorn master, with Prometheus' multiprocess mode.
        return [python, "-m", "gateway", "serve"]
    if name == "gunicorn":
        command = [python, "-m", "gunicorn", "-k", "bench.portico_worker.UvicornWorker", "-b", f"127.0.0.1:{port}"]
        command += ["-w", str(workers), "--keep-alive", KEEP_ALIVE_SECONDS, "--graceful-timeout", GRACEFUL_SECONDS]
        return [*command, "--log-level", "warning", f"{FACTORY}()"]
    raise ValueError(name)


@contextlib.contextmanager
def portico(rig: Rig, name: str, *, workers: int = 1, cpus: Collection[int] | None = None) -> Iterator[tuple[str, int]]:
    """A running gateway; yields its base URL and the pid of its process (the supervisor, if any)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = portico_command(name, port, workers)
    env = {**portico_env(rig, port), "GATEWAY_WORKERS": str(workers)}
    with server(command, env=env, health_url=f"{base}/health/live", cpus=cpus) as proc:
        yield base, proc.pid


@contextlib.contextmanager
def comparator(rig: Rig, name: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    if name == "nginx":
        with nginx(port, proxy_to=int(rig.upstream_url.rsplit(":", 1)[1])) as pid:
            yield base, pid
        return
    env = {
        "BENCH_DOWNSTREAM_URL": rig.upstream_url,
        "BENCH_JWT_SECRET": rig.jwt_secret,
        "BENCH_REDIS_URL": rig.redis_url,
        "BENCH_REDIS_PREFIX": f"{rig.redis_prefix}slowapi",
        "BENCH_OTLP_ENDPOINT": rig.sink_url,
    }
    if name == "lean":
        env["BENCH_REDIS_PREFIX"] = rig.redis_prefix
        command = [sys.executable, "-m", "bench.lean", str(port)]
    else:
        command = [sys.executable, "-m", "bench.comparators", name, str(port)]
    with server(command, env=env, health_url=f"{base}/health") as proc:
        yield base, proc.pid


@contextlib.contextmanager
def rig(args: argparse.Namespace) -> Iterator[Rig]:
    """The upstream, the span receiver and a Redis key prefix, for the whole run."""
    require_wrk()
    require_nginx()
    with (
        redis_prefix(args.redis_url) as prefix,
        tempfile.TemporaryDirectory(prefix="bench-gateway-") as scratch,
        contextlib.ExitStack() as stack,
    ):
        port = free_port()
        if args.upstream == "nginx":
            upstream_pid = stack.enter_context(nginx(port))
        else:
            command = [sys.executable, "-m", "bench.static_upstream", str(port)]
            upstream_pid = stack.enter_context(server(command, env={}, health_url=f"http://127.0.0.1:{port}/")).pid
        sink_port = free_port()
        secret = secrets.token_urlsafe(32)
        sink = stack.enter_context(
            server(
                [sys.executable, "-m", "bench.otlp_sink", str(sink_port)],
                env={},
                health_url=f"http://127.0.0.1:{sink_port}/",
            )
        )
        yield Rig(
            upstream_url=f"http://127.0.0.1:{port}",
            upstream_pid=upstream_pid,
            sink_url=f"http://127.0.0.1:{sink_port}",
            sink_pid=sink.pid,
            redis_url=args.redis_url,
            redis_prefix=prefix,
            jwt_secret=secret,
            # One caller (one tenant) for the whole run, the same for every gateway.
            token=bearer(secret=secret),
            scratch=Path(scratch),
        )


# --- measuring

Run = Callable[[Row, int], WrkResult]


def check_answers(row: Row, *, method: str = "GET", body: str | None = None) -> None:
    """One request as wrk will send it must answer 200 with JSON, or the row would measure errors."""
    response = httpx.request(method, row.url, headers=row.headers, content=body, timeout=10)
    if response.status_code != 200 or not response.headers.get("content-type", "").startswith("application/json"):
        sys.exit(f"{row.name} answered {response.status_code}: {response.text[:500]}")
    response.json()


def wrk_runner(args: argparse.Namespace, cpus: Callable[[Row], Collection[int] | None] = lambda _: None) -> Run:
    def run(row: Row, seconds: int) -> WrkResult:
        return wrk(
            row.url,
            headers=row.headers,
            seconds=seconds,
            connections=args.connections,
            threads=args.threads,
            script=row.script,
            cpus=cpus(row),
            strict=False,
        )

    return run


def interleave(rows: Sequence[Row], args: argparse.Namespace, run: Run) -> None:
    """Warms every row up, then measures `args.rounds` rounds, each starting one row further on."""
    for row in rows:
        run(row, args.warmup)
    for n in range(args.rounds):
        for i in range(len(rows)):
            row = rows[(n + i) % len(rows)]
            result = run(row, args.seconds)
            row.results.append(result)
            errors = f", {result.errors} errors" if result.errors else ""
            print(
                f"round {n + 1}: {row.name}: {result.requests_per_second:.0f} req/s, "
                f"p99 {result.p99_ms:.1f} ms{errors}",
                file=sys.stderr,
                flush=True,
            )


def spans_received(rig: Rig) -> dict[str, int]:
    counts: dict[str, int] = httpx.get(rig.sink_url, timeout=5).json()
    return counts


def header(args: argparse.Namespace, what: str) -> str:
    upstream = "nginx" if args.upstream == "nginx" else "bench/static_upstream.py (one uvicorn worker)"
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs; wrk -t{args.threads} -c{args.connections}, "
        f"{args.seconds} s x {args.rounds} rounds, interleaved; {what}; upstream: {upstream}"
    )


def table(columns: Sequence[str], lines: Iterable[Sequence[str]]) -> None:
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for cells in lines:
        print("| " + " | ".join(cells) + " |")


def errors_note(rows: Sequence[Row]) -> None:
    failing = [f"{row.name} ({row.errors})" for row in rows if row.errors]
    if failing:
        print(f"\nWARNING: non-2xx answers or socket errors in: {', '.join(failing)}; those rows are not valid.")


def ms(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def p50(result: WrkResult) -> float:
    return result.p50_ms


def p99(result: WrkResult) -> float:
    return result.p99_ms


# --- process figures from /proc


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                todo.extend(int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split())
    return tree


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by `pid` and the processes below it."""
    ticks = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            # The fields after the command name, which is in parentheses and may hold spaces.
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(match[1]) / 1024 if match else 0.0


def worker_pid(pid: int) -> int:
    """The process that serves requests: `pid` itself, or under a supervisor its biggest child."""
    below = process_tree(pid)[1:]
    return max(below, key=rss_mib) if below else pid


def pin(pid: int, cpus: Collection[int]) -> None:
    """Moves every thread of `pid` and of the processes below it onto `cpus`."""
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task), cpus)


# --- the runs


def compare(args: argparse.Namespace) -> None:
    with rig(args) as r, contextlib.ExitStack() as stack:
        rows: list[Row] = []
        for name in args.only:
            if name == "portico":
                for server_name in args.server:
                    base, pid = stack.enter_context(portico(r, server_name))
                    rows.append(Row(f"Portico ({server_name})", f"{base}/v1/users/me", r.headers, pid))
            else:
                base, pid = stack.enter_context(comparator(r, name))
                rows.append(Row(name, f"{base}/v1/users/me", r.headers, pid))
        for row in rows:
            check_answers(row)
        plain = wrk_runner(args)
        # CPU time of each gateway's processes per answered request: unlike req/s, it barely moves when
        # other work competes for the cores.
        cpu_per_request: dict[str, list[float]] = {row.name: [] for row in rows}

        def run(row: Row, seconds: int) -> WrkResult:
            start = cpu_seconds(row.pid)
            result = plain(row, seconds)
            cpu_per_request[row.name].append((cpu_seconds(row.pid) - start) / max(result.requests, 1) * 1e6)
            return result

        interleave(rows, args, run)
        stack.close()  # the gateways' exporters send what they still hold as they stop
        spans = spans_received(r)

    by_name = {row.name: row for row in rows}
    textbook, bare = by_name.get("textbook"), by_name.get("aiohttp")
    # The first figure of each row is its warm-up.
    cpu = {name: statistics.median(figures[1:]) for name, figures in cpu_per_request.items()}

    def cells(row: Row) -> list[str]:
        return [
            row.name,
            f"{row.rate:.0f}",
            row.rounds,
            f"{row.rate / textbook.rate:.2f}x" if textbook else "",
            f"{row.rate / bare.rate:.2f}x" if bare else "",
            ms(row.median(p50)),
            ms(row.median(p99)),
            f"{row.median(p99) / textbook.median(p99):.2f}x" if textbook else "",
            f"{cpu[row.name]:.0f}",
            f"{cpu[row.name] / cpu['textbook']:.2f}x" if textbook else "",
            str(row.errors),
        ]

    print("\n" + header(args, "one worker each") + "\n")
    columns = ["gateway", "req/s (median)", "rounds", "vs textbook", "vs aiohttp", "p50 ms", "p99 ms"]
    columns += ["p99 vs textbook", "CPU µs/request", "CPU vs textbook", "errors"]
    table(columns, (cells(row) for row in rows))
    print(f"\nSpans the OTLP receiver got, per service: {json.dumps(spans, sort_keys=True)}")
    errors_note(rows)


def idempotency_outcomes(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    pattern = r'^gateway_idempotency_total\{outcome="(\w+)"\}\s+(\S+)'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.MULTILINE)}


def keyed_post(args: argparse.Namespace) -> None:
    with rig(args) as r, contextlib.ExitStack() as stack:
        rows: list[Row] = []
        bases: dict[str, str] = {}
        post_headers = {**r.headers, "Content-Type": "application/json"}
        for server_name in args.server:
            base, pid = stack.enter_context(portico(r, server_name))
            bases[server_name] = base
            check_answers(Row("POST", f"{base}/v1/users", post_headers), method="POST", body=USER_BODY)
            for keyed in (False, True):
                label = "a new Idempotency-Key on each request" if keyed else "no Idempotency-Key"
                script = post_script(r.scratch, keyed=keyed, headers=post_headers, body=USER_BODY)
                rows.append(
                    Row(f"Portico ({server_name}), POST /v1/users, {label}", f"{base}/v1/users", {}, pid, script)
                )
        interleave(rows, args, wrk_runner(args))
        outcomes = {name: idempotency_outcomes(base) for name, base in bases.items()}

    def lines() -> Iterator[list[str]]:
        for plain, keyed in zip(rows[::2], rows[1::2], strict=True):
            for row in (plain, keyed):
                yield [
                    row.name,
                    f"{row.rate:.0f}",
                    row.rounds,
                    f"{row.rate / plain.rate:.2f}x",
                    ms(row.median(p50)),
                    ms(row.median(p99)),
                    str(row.errors),
                ]

    print("\n" + header(args, "one Portico worker per server") + "\n")
    table(["workload", "req/s (median)", "rounds", "vs no key", "p50 ms", "p99 ms", "errors"], lines())
    # Each keyed request is a first request, so it is stored and never replayed.
    for name, counts in outcomes.items():
        print(f"\nIdempotency outcomes on Portico ({name}) over the whole run: {json.dumps(counts, sort_keys=True)}")
    errors_note(rows)


def scaling(args: argparse.Namespace) -> None:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        sys.exit("--scaling needs at least 2 CPUs")
    with rig(args) as r, contextlib.ExitStack() as stack:
        rows: list[Row] = []
        for server_name in args.server:
            for workers in (1, 2):
                # The gateway gets its own cores; the upstream, the span receiver and wrk get the rest,
                # or share the gateway's when none is left.
                base, pid = stack.enter_context(portico(r, server_name, workers=workers, cpus=cores[:workers]))
                name = f"Portico ({server_name}), {workers} worker{'s' if workers > 1 else ''}"
                rows.append(Row(name, f"{base}/v1/users/me", r.headers, pid, load_cpus=cores[workers:] or cores))
        for row in rows:
            check_answers(row)

        plain = wrk_runner(args, cpus=lambda row: row.load_cpus)
        cpu_per_request: dict[str, list[float]] = {row.name: [] for row in rows}

        def run(row: Row, seconds: int) -> WrkResult:
            assert row.load_cpus is not None
            for pid in (r.upstream_pid, r.sink_pid):
                pin(pid, row.load_cpus)
            start = cpu_seconds(row.pid)
            result = plain(row, seconds)
            cpu_per_request[row.name].append((cpu_seconds(row.pid) - start) / max(result.requests, 1) * 1e6)
            return result

        interleave(rows, args, run)

    def lines() -> Iterator[list[str]]:
        for one, two in zip(rows[::2], rows[1::2], strict=True):
            for row, workers in ((one, 1), (two, 2)):
                assert row.load_cpus is not None
                yield [
                    row.name,
                    ",".join(str(c) for c in cores[:workers]),
                    ",".join(str(c) for c in row.load_cpus),
                    f"{row.rate:.0f}",
                    row.rounds,
                    f"{row.rate / one.rate:.2f}x",
                    f"{statistics.median(cpu_per_request[row.name][1:]):.0f} µs",  # the first is the warm-up
                    ms(row.median(p50)),
                    ms(row.median(p99)),
                    str(row.errors),
                ]

    print("\n" + header(args, "Portico with 1 and 2 workers, pinned with taskset") + "\n")
    columns = ["gateway", "gateway CPUs", "wrk + upstream CPUs", "req/s (median)", "rounds", "vs 1 worker"]
    table([*columns, "gateway CPU time per request", "p50 ms", "p99 ms", "errors"], lines())
    errors_note(rows)


# A steady rate: each wrk thread hands out send times `interval` ms apart to whichever of its
# connections is free. A thread that falls behind starts again from now rather than catching up in a
# burst. (LuaJIT's ffi gives a millisecond clock; wrk's own Lua has none.)
_PACING_SCRIPT = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} bench_timespec;
int clock_gettime(int clock, bench_timespec *ts);
]]
local ts = ffi.new("bench_timespec")
local interval = {interval}
local due = 0
function delay()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  local now = tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  due = math.max(due + interval, now)
  return math.floor(due - now)
end
"""


def pacing_script(directory: Path, interval_ms: float) -> Path:
    """A wrk script sending one request every `interval_ms` from each wrk thread."""
    path = directory / "pacing.lua"
    path.write_text(_PACING_SCRIPT.format(interval=interval_ms))
    return path


def memory(args: argparse.Namespace) -> None:
    server_name = args.server[0]
    with rig(args) as r, portico(r, server_name) as (base, pid):
        row = Row(f"Portico ({server_name})", f"{base}/v1/users/me", r.headers, pid)
        check_answers(row)
        run = wrk_runner(args)
        run(row, args.warmup)
        capacity = run(row, args.capacity_seconds).requests_per_second
        target = args.load * capacity
        script = pacing_script(r.scratch, args.threads * 1000 / target)
        worker = worker_pid(pid)
        samples: list[tuple[float, float]] = []
        started = time.monotonic()

        def sample() -> None:
            samples.append((time.monotonic() - started, rss_mib(worker)))

        result = wrk(
            row.url,
            headers=row.headers,
            seconds=args.memory_seconds,
            connections=args.connections,
            threads=args.threads,
            script=script,
            strict=False,
            tick=sample,
            tick_seconds=args.sample_seconds,
        )
        sample()

    first, last = samples[0][1], samples[-1][1]
    peak = max(rss for _, rss in samples)
    achieved = result.requests_per_second
    print(
        f"\n{platform.machine()}, {os.cpu_count()} CPUs; Portico ({server_name}), one worker (pid {worker}); "
        f"wrk -t{args.threads} -c{args.connections}, paced\n"
    )
    figures = [
        ["capacity (unpaced)", f"{capacity:.0f} req/s over {args.capacity_seconds} s"],
        ["target", f"{args.load:.0%} of capacity = {target:.0f} req/s"],
        ["achieved", f"{achieved:.0f} req/s ({achieved / capacity:.0%} of capacity) for {args.memory_seconds} s"],
        ["latency p50 / p99", f"{ms(result.p50_ms)} / {ms(result.p99_ms)} ms"],
        ["errors", str(result.errors)],
        ["RSS at start", f"{first:.1f} MiB"],
        ["RSS at end", f"{last:.1f} MiB"],
        ["RSS max", f"{peak:.1f} MiB"],
        ["drift (end vs start)", f"{(last - first) / first:+.1%}"],
        ["max vs start", f"{(peak - first) / first:+.1%}"],
    ]
    table(["figure", "value"], figures)
    print()
    step = max(1, len(samples) // 10)
    table(["seconds", "RSS MiB"], ([f"{t:.0f}", f"{rss:.1f}"] for t, rss in [*samples[:-1:step], samples[-1]]))
    if result.errors:
        print(f"\nWARNING: {result.errors} non-2xx answers or socket errors; the run is not valid.")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each measured wrk run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load on each row before the rounds")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--server",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        default=["uvicorn"],
        help=f"ASGI server(s) for Portico, comma-separated, one row each: {', '.join(SERVERS)}. "
        "uvicorn with one worker is `python -m gateway serve` itself",
    )
    parser.add_argument(
        "--only",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        default=list(GATEWAYS),
        help=f"gateways to compare, comma-separated: {', '.join(GATEWAYS)}",
    )
    parser.add_argument("--upstream", choices=["python", "nginx"], default="python")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--keyed-post", action="store_true", help="POST with a new Idempotency-Key vs without one")
    mode.add_argument("--scaling", action="store_true", help="Portico with 1 and 2 workers")
    mode.add_argument("--memory", action="store_true", help="RSS of a Portico worker under a steady load")
    parser.add_argument("--memory-seconds", type=int, default=600, help="length of the --memory run")
    parser.add_argument("--load", type=float, default=0.7, help="--memory load, as a fraction of capacity")
    parser.add_argument("--capacity-seconds", type=int, default=20, help="--memory: the run that finds capacity")
    parser.add_argument("--sample-seconds", type=float, default=5, help="--memory: RSS sampling interval")
    args = parser.parse_args()
    for name in args.server:
        if name not in SERVERS:
            parser.error(f"unknown server {name!r}; choose from {', '.join(SERVERS)}")
    for name in args.only:
        if name not in GATEWAYS:
            parser.error(f"unknown gateway {name!r}; choose from {', '.join(GATEWAYS)}")
    if args.keyed_post:
        keyed_post(args)
    elif args.scaling:
        scaling(args)
    elif args.memory:
        memory(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
