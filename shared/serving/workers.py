"""Several workers per process (`<PREFIX>WORKERS` > 1): a gunicorn master and uvicorn workers.

The worker class is uvicorn-worker's, with its `_serve` replaced (to serve with `DrainingServer`):
uvicorn-worker is pinned to one minor release in pyproject.toml, and
`tests/unit/test_serving_internals.py` fails on any change of what is used here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, ClassVar

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger
from starlette.types import ASGIApp
from uvicorn_worker import UvicornWorker

from shared.contract import WEBSOCKET_MAX_MESSAGE_BYTES
from shared.metrics import samples_directory
from shared.serving.multiprocess import fold_exited_worker, prepare_multiprocess_metrics
from shared.serving.protocol import serving_protocol
from shared.serving.server import DrainingServer, before_shutdown_of
from shared.settings import ProcessSettings

# What the master adds to the shutdown timeout before it kills a worker: the worker's own lifespan
# shutdown (closing pools, flushing spans) runs after its in-flight requests are done.
SHUTDOWN_MARGIN_SECONDS = 5


def gunicorn_worker(settings: ProcessSettings) -> type[UvicornWorker]:
    """uvicorn-worker's gunicorn worker, serving as `python -m <process> serve` does: the bounded
    protocol with the process's limits, no proxy headers, our access log rather than uvicorn's, small
    WebSocket messages only, and in-flight requests finished within `shutdown_timeout_seconds`.
    (uvicorn-worker passes none of gunicorn's graceful timeout to uvicorn, whose shutdown then waits
    for in-flight requests without bound until the master kills the worker.)"""

    # uvicorn-worker ships no type information, so its class is Any to mypy, and strict mode refuses
    # to subclass Any.
    class Worker(UvicornWorker):  # type: ignore[misc]  # uvicorn-worker's class is Any (see above)
        CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
            "loop": "auto",
            "http": serving_protocol(settings),
            "proxy_headers": False,
            "access_log": False,
            "timeout_graceful_shutdown": settings.shutdown_timeout_seconds,
            "ws_max_size": WEBSOCKET_MAX_MESSAGE_BYTES,
        }

        async def _serve(self) -> None:
            # uvicorn-worker's own, with the draining server (so a stopping worker's WebSockets close
            # with the app's code too).
            self.config.app = self.wsgi
            server = DrainingServer(self.config, before_shutdown_of(self.wsgi))
            self._install_sigquit_handler()
            await server.serve(sockets=self.sockets)
            if not server.started:
                sys.exit(Arbiter.WORKER_BOOT_ERROR)

    return Worker


# gunicorn ships no type information, so its class is Any to mypy, and strict mode refuses to
# subclass Any.
class _ProcessLogger(Logger):  # type: ignore[misc]  # gunicorn's class is Any (see above)
    """gunicorn's logger, writing through the process's own handler (`configure_logging`) rather than
    handlers of its own: the master's and the workers' lines are JSON like every other line of the
    process, and pass the same redaction of credentials."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            log.handlers[:] = []
            log.propagate = True


# As above: gunicorn's classes are Any to mypy.
class _GunicornServer(BaseApplication):  # type: ignore[misc]  # gunicorn's class is Any
    def __init__(self, load: Callable[[], ASGIApp], options: dict[str, Any]) -> None:
        self._load = load
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> ASGIApp:
        return self._load()


def _worker_exited(server: Any, worker: Any) -> None:
    directory = samples_directory()
    if directory is None:
        return
    try:
        fold_exited_worker(directory, worker.pid)
    except OSError:
        # Never the master's end: the exited worker's files stay, and are still summed.
        server.log.exception("could not fold the metrics of exited worker %s", worker.pid)


def serve_workers(process: str, settings: ProcessSettings, port: int, load: Callable[[], ASGIApp]) -> None:
    """Serves `load()`'s app with `settings.workers` uvicorn workers under a gunicorn master.

    The master binds the socket and keeps it; each worker builds the app in its own process (not
    preloaded: pools and threads are per worker). SIGTERM to the master stops accepting, lets each
    worker finish its in-flight requests within `shutdown_timeout_seconds`, and kills any worker still
    running `SHUTDOWN_MARGIN_SECONDS` later. A worker is replaced after `max_requests` requests (plus
    jitter); a worker that dies is replaced at once.
    """
    prepare_multiprocess_metrics(process)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    options: dict[str, Any] = {
        "bind": f"{host}:{port}",
        "workers": settings.workers,
        "worker_class": gunicorn_worker(settings),
        "graceful_timeout": settings.shutdown_timeout_seconds + SHUTDOWN_MARGIN_SECONDS,
        "keepalive": settings.server_keep_alive_seconds,
        "max_requests": settings.max_requests,
        "max_requests_jitter": settings.max_requests_jitter if settings.max_requests else 0,
        "child_exit": _worker_exited,
        # gunicorn's control socket lives at one path per user ($HOME/.gunicorn), which every master
        # on the host would share, and which a read-only root file system cannot hold.
        "control_socket_disable": True,
        "proc_name": f"portico-{process}",
        "accesslog": None,
        "logger_class": _ProcessLogger,
        "loglevel": settings.log_level.lower(),
    }
    _GunicornServer(load, options).run()
