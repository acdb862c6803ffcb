"""`python -m loadtest` (`make loadtest`, `make soak`): a headless locust run against the gateway and
its report (PNG plots and summary.md) in var/loadtest/<time>-<mode>/.

The gateway is LOADTEST_HOST or --host (default http://127.0.0.1:8000, where `make run` serves). When
nothing answers there, `make run`'s stack (`python -m scripts.run`) is started for the run and stopped after.
While the load runs, the resident memory of every process listening on Portico's ports on this machine
is sampled.

The soak runs 10 minutes at 70% of capacity: --capacity REQ_PER_S, or, without it, a one-minute
probe first (ramping users without think time; the best 10 s rate with under 1% errors).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

from loadtest.bootstrap import bootstrap, save
from loadtest.outcomes import MEMORY_FIELDS
from loadtest.report import capacity, read_run, write_report
from scripts.devstack import DEFAULT_PORTS, WORKER_PORTS

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
DEFAULT_HOST = "http://127.0.0.1:8000"
PORTS = {port: name for name, port in {**DEFAULT_PORTS, **WORKER_PORTS}.items()}
SOAK_SHARE = 0.7


def ready(host: str) -> bool:
    try:
        return httpx.get(f"{host}/health/ready", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


class LocalStack:
    """`make run`'s stack (`python -m scripts.run`), started when nothing answers at the default address."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, host: str, timeout: float = 240) -> None:
        print(f"nothing answers at {host}: starting `make run`'s stack (log: {self.log})", flush=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scripts.run"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while not ready(host):
            if self.proc.poll() is not None:
                raise RuntimeError(f"`make run` exited with code {self.proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"`make run` was not ready after {timeout:.0f}s; see {self.log}")
            time.sleep(1)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # scripts.run stops its five processes on SIGTERM
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class MemorySampler(threading.Thread):
    """Samples the RSS of the processes listening on Portico's ports into memory.csv."""

    def __init__(self, path: Path, interval: float) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.interval = interval
        self.stopping = threading.Event()

    def listeners(self) -> dict[int, str]:
        found = {}
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in PORTS and conn.pid:
                found[conn.pid] = PORTS[conn.laddr.port]
        return found

    def run(self) -> None:
        with self.path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(MEMORY_FIELDS)
            processes = self.listeners()
            while not self.stopping.is_set():
                now = f"{time.time():.3f}"
                for pid, name in list(processes.items()):
                    try:
                        writer.writerow((now, name, pid, psutil.Process(pid).memory_info().rss))
                    except psutil.NoSuchProcess:
                        processes = self.listeners()  # restarted: find it again
                f.flush()
                self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


def run_locust(
    host: str, out: Path, users: int, spawn_rate: float, duration: str, env: dict[str, str], memory_interval: float
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        host,
        "--users",
        str(users),
        "--spawn-rate",
        str(spawn_rate),
        "--stop-timeout",
        "5",
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--exit-code-on-error",
        "0",
    ]
    child_env = {
        **os.environ,
        **env,
        "LOADTEST_OUT": str(out),
        "LOADTEST_DURATION": str(seconds(duration)),
        "PYTHONPATH": str(ROOT),
    }
    local = urlsplit(host).hostname in ("127.0.0.1", "localhost", "::1")
    sampler = MemorySampler(out / "memory.csv", memory_interval) if local else None
    if sampler:
        sampler.start()
    print(f"locust: {users} users for {duration} against {host} -> {out}", flush=True)
    try:
        with (out / "locust.log").open("wb") as log:
            code = subprocess.run(command, env=child_env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode  # noqa: S603
    finally:
        if sampler:
            sampler.stop()
    if code != 0:
        raise RuntimeError(f"locust exited with code {code}; see {out / 'locust.log'}")


def seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(duration[:-1]) * units[duration[-1]] if duration[-1] in units else float(duration)


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("LOADTEST_HOST", DEFAULT_HOST))
    parser.add_argument("--duration", help="load time: 60s, 10m (default 60s, a soak 10m)")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--spawn-rate", type=float, default=2.0, help="users started per second")
    parser.add_argument("--tenants-per-plan", type=int, default=2)
    parser.add_argument("--soak", action="store_true", help="10 minutes at 70%% of capacity, memory sampled")
    parser.add_argument("--capacity", type=float, help="req/s the soak takes as capacity (else: probed first)")
    parser.add_argument("--out", type=Path, help="report directory (default var/loadtest/<time>-<mode>)")
    args = parser.parse_args(argv)
    args.duration = args.duration or ("10m" if args.soak else "60s")
    # Stopped (Ctrl-C, kill), the run still stops locust and the stack it started. SIGINT is set too:
    # a shell that starts this in the background leaves it ignored.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, _stop)
    host = args.host.rstrip("/")
    mode = "soak" if args.soak else "run"
    out = args.out or ROOT / "var" / "loadtest" / f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{mode}"
    out.mkdir(parents=True, exist_ok=True)

    stack = LocalStack(out / "stack.log")
    if not ready(host):
        if host != DEFAULT_HOST:
            print(f"{host}/health/ready does not answer 200", file=sys.stderr)
            return 1
        stack.start(host)
    try:
        started = time.monotonic()
        tenants = bootstrap(host, tenants_per_plan=args.tenants_per_plan, run_id=uuid.uuid4().hex[:8])
        print(f"bootstrapped {len(tenants)} tenants in {time.monotonic() - started:.0f}s", flush=True)
        save(tenants, out / "tenants.json")
        env = {"LOADTEST_TENANTS": str(out / "tenants.json")}
        meta: dict[str, object] = {
            "mode": mode,
            "host": host,
            "users": args.users,
            "duration": args.duration,
            "started": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        }
        if args.soak:
            rps = args.capacity
            if rps is None:
                probe = out / "probe"
                probe_users = max(args.users, 60)
                run_locust(
                    host,
                    probe,
                    probe_users,
                    probe_users / 50,  # all users running after 50 of the 60 s
                    "60s",
                    {**env, "LOADTEST_THINK_MIN": "0", "LOADTEST_THINK_MAX": "0"},
                    2,
                )
                probe_meta = {**meta, "mode": "capacity probe", "duration": "60s", "users": probe_users}
                (probe / "run.json").write_text(json.dumps(probe_meta))
                write_report(probe)
                rps = capacity(read_run(probe))
                print(f"capacity: {rps:.1f} req/s (probe report: {probe / 'summary.md'})", flush=True)
            meta |= {"capacity_rps": rps, "target_rps": SOAK_SHARE * rps}
            env |= {
                "LOADTEST_TARGET_RPS": f"{SOAK_SHARE * rps:.2f}",
                "LOADTEST_THINK_MIN": "0",
                "LOADTEST_THINK_MAX": "0",
            }
        (out / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
        interval = 5.0 if seconds(args.duration) > 120 else 1.0
        run_locust(host, out, args.users, args.spawn_rate, args.duration, env, interval)
    finally:
        stack.stop()
    summary = write_report(out)
    print(f"report: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
