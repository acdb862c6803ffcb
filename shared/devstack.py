"""Starts the five processes as real subprocesses: used by `make run` and the end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# Services first, gateway last: the gateway is ready only when every service is.
PROCESSES: dict[str, str] = {
    "users": "services.users",
    "orders": "services.orders",
    "inventory": "services.inventory",
    "webhooks": "services.webhooks",
    "gateway": "gateway",
}
ENV_PREFIX = {name: ("GATEWAY_" if name == "gateway" else f"{name.upper()}_") for name in PROCESSES}
# Processes that work beside a service, on its settings: name -> (service, command, its port setting).
WORKERS: dict[str, tuple[str, str, str]] = {
    "webhooks-worker": ("webhooks", "worker", "WEBHOOKS_WORKER_PORT"),
}
DEFAULT_PORTS = {
    "gateway": 8000,
    "users": 8001,
    "orders": 8002,
    "inventory": 8003,
    "webhooks": 8004,
    "webhooks-worker": 8005,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Stack:
    """The whole system on one machine. `env` applies to every process; `env_for` to one."""

    ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    env: Mapping[str, str] = field(default_factory=dict)
    env_for: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    log_dir: Path | None = None
    cwd: Path = field(default_factory=Path.cwd)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Which of WORKERS start with the stack.
    workers: tuple[str, ...] = tuple(WORKERS)

    def __post_init__(self) -> None:
        missing = {name: free_port() for name in self.workers if name not in self.ports}
        if missing:
            self.ports = {**self.ports, **missing}

    def url(self, name: str = "gateway") -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def process_env(self, name: str) -> dict[str, str]:
        if name in WORKERS:
            service, _, port_setting = WORKERS[name]
            env = self.process_env(service)
            env[port_setting] = str(self.ports[name])
            env["OTEL_SERVICE_NAME"] = name
            env.update(self.env_for.get(name, {}))
            return env
        env = {**os.environ, **self.env}
        prefix = ENV_PREFIX[name]
        env[f"{prefix}PORT"] = str(self.ports[name])
        if name == "gateway":
            for service in PROCESSES:
                if service != "gateway":
                    env[f"GATEWAY_{service.upper()}_URL"] = self.url(service)
        else:
            for service in PROCESSES:
                if service not in ("gateway", name):
                    env[f"{prefix}{service.upper()}_URL"] = self.url(service)
        env.setdefault("OTEL_SERVICE_NAME", name)
        env["OTEL_SERVICE_NAME"] = name
        env.update(self.env_for.get(name, {}))
        return env

    def _run(self, name: str, command: str, **kwargs: object) -> subprocess.Popen[bytes]:
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps its own copy
        try:
            # The command is this interpreter running one of our own modules.
            module = PROCESSES[WORKERS[name][0]] if name in WORKERS else PROCESSES[name]
            return subprocess.Popen(  # type: ignore[call-overload, no-any-return]  # noqa: S603
                [sys.executable, "-m", module, command],
                env=self.process_env(name),
                cwd=self.cwd,
                stdout=log if log is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                **kwargs,
            )
        finally:
            if log is not None:
                log.close()

    def migrate(self) -> None:
        for name in PROCESSES:
            if name == "gateway":
                continue
            code = self._run(name, "migrate").wait(timeout=120)
            if code != 0:
                raise RuntimeError(f"migrating {name} failed with exit code {code}")

    def start(self, timeout: float = 60.0) -> None:
        for name in (*PROCESSES, *self.workers):
            self.start_one(name)
        self.wait_ready(timeout)
        for name in self.workers:
            self.wait_ready(timeout, name)

    def start_one(self, name: str) -> None:
        command = WORKERS[name][1] if name in WORKERS else "serve"
        self.procs[name] = self._run(name, command, start_new_session=True)

    def wait_ready(self, timeout: float = 60.0, name: str = "gateway") -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for proc_name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc_name} exited with code {proc.returncode}")
            try:
                response = httpx.get(self.url(name) + "/health/ready", timeout=2.0)
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise TimeoutError(f"{name} not ready after {timeout}s: {last}")

    def stop_one(self, name: str, timeout: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop_one(name)
