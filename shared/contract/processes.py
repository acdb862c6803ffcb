"""The processes, their modules and default ports (settings, the dev stack, tests and the
Makefile), the workers that run beside a service, the paths every one of them serves, and the
largest WebSocket message their servers read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Process:
    name: str
    module: str  # `python -m <module>`
    port: int  # where it listens unless its settings say otherwise
    has_database: bool

    @property
    def env_prefix(self) -> str:
        return f"{self.name.upper()}_"

    @property
    def default_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# Services first, gateway last: the gateway is ready only when every service is.
PROCESSES: dict[str, Process] = {
    process.name: process
    for process in (
        Process("users", "services.users", 8001, has_database=True),
        Process("orders", "services.orders", 8002, has_database=True),
        Process("inventory", "services.inventory", 8003, has_database=True),
        Process("webhooks", "services.webhooks", 8004, has_database=True),
        Process("gateway", "gateway", 8000, has_database=False),
    )
}
# The services behind the gateway; each is also the audience of the identity tokens sent to it.
SERVICES: tuple[str, ...] = tuple(name for name in PROCESSES if name != "gateway")


@dataclass(frozen=True, slots=True)
class Worker:
    """A process beside a service, on the service's settings and database (`python -m <module>
    <command>`), serving only its probes and metrics, on the port its `port_setting` names."""

    name: str
    service: str
    command: str
    port: int
    port_setting: str

    @property
    def module(self) -> str:
        return PROCESSES[self.service].module

    @property
    def port_env(self) -> str:
        return PROCESSES[self.service].env_prefix + self.port_setting.upper()


# What every process and worker serves besides its API: liveness, readiness (which the gateway and the
# health checks of a fleet ask too) and the metrics scrape. None is traced or shed, nor rate limited
# by default.
LIVE_PATH = "/health/live"
READY_PATH = "/health/ready"
METRICS_PATH = "/metrics"
PROBE_PATHS: tuple[str, ...] = (LIVE_PATH, READY_PATH, METRICS_PATH)

# The largest WebSocket message a client may send any process, in bytes (uvicorn's `ws_max_size`,
# whose default is 16 MiB). uvicorn holds a whole message before the app sees it; what clients send
# is small (the gateway's `{"type": "ping"}`). A longer message closes the connection with 1009
# (message too big) as soon as its frame's header announces the length, before the payload is read.
WEBSOCKET_MAX_MESSAGE_BYTES = 4 * 1024

# The webhook delivery worker, beside the webhooks service.
WEBHOOKS_WORKER = "webhooks-worker"
WORKERS: dict[str, Worker] = {
    worker.name: worker for worker in (Worker(WEBHOOKS_WORKER, "webhooks", "worker", 8005, "worker_port"),)
}
