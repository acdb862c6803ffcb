"""Starts the five processes and the workers beside them (the webhook delivery worker) as real
subprocesses: used by `make run`, `make migrate` and the end-to-end tests.
`python -m scripts.devstack migrate` migrates every service's database."""

from __future__ import annotations

import importlib
import importlib.util
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

from shared import contract

# Name -> module, services first and the gateway last (it is ready only when every service is).
PROCESSES: dict[str, str] = {name: process.module for name, process in contract.PROCESSES.items()}
DEFAULT_PORTS: dict[str, int] = {name: process.port for name, process in contract.PROCESSES.items()}
WORKER_PORTS: dict[str, int] = {name: worker.port for name, worker in contract.WORKERS.items()}


def service_of(name: str) -> str:
    """The process an instance name runs: `inventory#2` is a second inventory instance."""
    return name.partition("#")[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Stack:
    """The whole system on one machine. `env` applies to every process; `env_for` to one.

    More instances of a service are more names in `ports`, `<service>#<n>` (`inventory#2`): every
    process that calls the service is given all of its instances' URLs, a fleet. `hosts` binds an
    instance to another loopback address than 127.0.0.1. With `keep_env_urls`, a `<PREFIX><SERVICE>_URL`
    already in the environment is passed on as it is (`make run`)."""

    ports: Mapping[str, int] = field(default_factory=lambda: {**DEFAULT_PORTS, **WORKER_PORTS})
    env: Mapping[str, str] = field(default_factory=dict)
    env_for: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    log_dir: Path | None = None
    cwd: Path = field(default_factory=Path.cwd)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Which of the contract's workers start with the stack.
    workers: tuple[str, ...] = tuple(contract.WORKERS)
    hosts: Mapping[str, str] = field(default_factory=dict)
    keep_env_urls: bool = False

    def __post_init__(self) -> None:
        # Ports given without the workers' (tests move the processes to free ports): theirs too.
        missing = {name: free_port() for name in self.workers if name not in self.ports}
        if missing:
            self.ports = {**self.ports, **missing}

    def url(self, name: str = "gateway") -> str:
        return f"http://{self.hosts.get(name, '127.0.0.1')}:{self.ports[name]}"

    def instances(self, service: str) -> list[str]:
        """The names of a service's instances (the service's own name first)."""
        return [name for name in self.ports if service_of(name) == service]

    def service_url(self, service: str) -> str:
        """What a caller is told of a service: its one URL, or its instances' URLs, comma-separated."""
        return ",".join(self.url(name) for name in self.instances(service))

    def process_env(self, name: str) -> dict[str, str]:
        if name in contract.WORKERS:
            worker = contract.WORKERS[name]
            env = self.process_env(worker.service)
            env[worker.port_env] = str(self.ports[name])
            env["OTEL_SERVICE_NAME"] = name
            env.update(self.env_for.get(name, {}))
            return env
        env = {**os.environ, **self.env}
        process = service_of(name)
        prefix = contract.PROCESSES[process].env_prefix
        env[f"{prefix}PORT"] = str(self.ports[name])
        if name in self.hosts:
            env[f"{prefix}HOST"] = self.hosts[name]
        # Every process is told where every service is; each reads the URLs its settings have.
        for service in contract.SERVICES:
            variable = f"{prefix}{service.upper()}_URL"
            if service != process and not (self.keep_env_urls and variable in env):
                env[variable] = self.service_url(service)
        env["OTEL_SERVICE_NAME"] = process
        env.update(self.env_for.get(name, {}))
        return env

    @staticmethod
    def module(name: str) -> str:
        worker = contract.WORKERS.get(name)
        return worker.module if worker is not None else PROCESSES[service_of(name)]

    def _run(self, name: str, command: str, *, start_new_session: bool = False) -> subprocess.Popen[bytes]:
        """Runs `python -m <process> <command>`; its output goes to its log file, or to ours without a
        log folder."""
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps its own copy
        try:
            # The command is this interpreter running one of our own modules.
            return subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", self.module(name), command],
                env=self.process_env(name),
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=start_new_session,
            )
        finally:
            if log is not None:
                log.close()

    def database_url(self, name: str) -> str:
        """The database a service's process would use: its `<PREFIX>DATABASE_URL`, else its settings'
        default, with a relative SQLite path taken from `cwd`, as the process would."""
        # Imported here: only migrating needs them (the tests import this module for the stack alone).
        from sqlalchemy.engine import make_url

        from shared.settings import BaseServiceSettings

        variable = f"{contract.PROCESSES[name].env_prefix}DATABASE_URL"
        # Environment variable names are not case-sensitive to the settings.
        given = [value for key, value in self.process_env(name).items() if key.upper() == variable]
        if given:
            url = given[-1]
        else:
            settings = importlib.import_module(f"{self.module(name)}.settings")
            (settings_class,) = [
                value
                for value in vars(settings).values()
                if isinstance(value, type)
                and issubclass(value, BaseServiceSettings)
                and value.model_config.get("env_prefix") == contract.PROCESSES[name].env_prefix
            ]
            url = str(settings_class.model_fields["database_url"].default)
        parsed = make_url(url)
        database = parsed.database
        if parsed.get_backend_name() == "sqlite" and database and database != ":memory:":
            return parsed.set(database=str(self.cwd / database)).render_as_string(hide_password=False)
        return url

    def behind(self) -> list[str]:
        """The services whose database is not at their scripts' head revision. Read in this process,
        without starting one per service (which would import the whole service to find nothing to do)."""
        from shared.migrations import at_head

        behind = []
        for name in contract.SERVICES:
            spec = importlib.util.find_spec(self.module(name))
            if spec is None or spec.origin is None:
                raise RuntimeError(f"{self.module(name)} is not importable from here")
            if not at_head(Path(spec.origin).parent, self.database_url(name)):
                behind.append(name)
        return behind

    def migrate(self, timeout: float = 300.0) -> None:
        """Migrates every service's database that is behind, all at once (each has its own)."""
        running = {name: self._run(name, "migrate") for name in self.behind()}
        deadline = time.monotonic() + timeout
        failed = []
        for name, proc in running.items():
            try:
                code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            if code != 0:
                failed.append(f"{name} (exit code {code})")
        if failed:
            raise RuntimeError(f"migrating failed: {', '.join(failed)}")

    def start(self, timeout: float = 60.0) -> None:
        extra = [name for name in self.ports if name not in PROCESSES and service_of(name) in PROCESSES]
        for name in (*extra, *PROCESSES, *self.workers):
            self.start_one(name)
        self.wait_ready(timeout)
        for name in (*extra, *self.workers):
            self.wait_ready(timeout, name)

    def start_one(self, name: str) -> None:
        worker = contract.WORKERS.get(name)
        command = worker.command if worker is not None else "serve"
        self.procs[name] = self._run(name, command, start_new_session=True)

    def wait_ready(self, timeout: float = 60.0, name: str = "gateway") -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        # One client for every probe: a client per probe builds a TLS context each time, which costs
        # the processes starting meanwhile a CPU second or more over a start.
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                for proc_name, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise RuntimeError(f"{proc_name} exited with code {proc.returncode}")
                try:
                    response = client.get(self.url(name) + contract.READY_PATH)
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


def main(argv: list[str]) -> int:
    if argv != ["migrate"]:
        print("usage: python -m scripts.devstack migrate", file=sys.stderr)
        return 2
    Stack().migrate()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
