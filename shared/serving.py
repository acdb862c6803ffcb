"""How every process is served: uvicorn's httptools protocol with a bounded request head.

uvicorn's httptools protocol keeps whatever a client sends as a request's head, however large:
httptools collects a header's name and value across reads until the line ends, and uvicorn keeps
every header of the request. A client sending megabytes of header (or a hundred thousand small
headers) makes the process hold them all before any application code can refuse anything.

`BoundedHttpToolsProtocol` counts the head while it arrives and refuses it with 431 (problem+json)
and closes the connection as soon as it is over a limit:

- the bytes received while a head is incomplete, checked after each read: what the parser buffers
  is bounded by the total limit plus one read, never by what the client sends;
- each line (the request target, or one header's name and value) and the whole head, exactly, in the
  parser's callbacks;
- the number of header fields.

The trailer fields of a chunked body are header fields too, and count against the same limits.

It costs a few integer operations per read and per header. Any uvicorn-based server can use it:
`python -m <process>` passes it to uvicorn with the process's limits (`serving_protocol`);
`uvicorn --http shared.serving:BoundedHttpToolsProtocol` and gunicorn's uvicorn worker (its
`CONFIG_KWARGS["http"]`) get the default limits. Servers with their own HTTP parser (granian, h11)
apply their own limits instead; the README lists them.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import sys
import tempfile
import uuid
from asyncio import TimerHandle
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httptools
import uvicorn
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client import values as prometheus_values
from prometheus_client.mmap_dict import MmapedDict
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from shared.errors import PorticoError, problem_response
from shared.metrics import MULTIPROC_ENV, samples_locked
from shared.settings import ProcessSettings

logger = logging.getLogger("portico.server")

# After a refusal, how much more of the head is read and discarded, and for how long, before the
# connection is closed: a client that writes before it reads then gets the 431 rather than a reset.
LINGER_BYTES = 8 * 1024 * 1024
LINGER_SECONDS = 2.0
# When the server shuts down, how long a connection without a request in progress (just accepted, or
# idle after an answer) may take to send its next request, which is then answered and is its last.
NEXT_REQUEST_SECONDS = 2.0


class RequestHeadersTooLarge(
    PorticoError, status=431, code="REQUEST_HEADERS_TOO_LARGE", title="Request Header Fields Too Large"
):
    """A request head over `MAX_HEADER_LINE_BYTES`, `MAX_HEADER_BYTES` or `MAX_HEADER_FIELDS`,
    answered by the server while it arrives, with `Connection: close`."""


@dataclass(frozen=True, slots=True)
class HeaderLimits:
    line_bytes: int = 16 * 1024
    total_bytes: int = 64 * 1024
    fields: int = 100

    @classmethod
    def of(cls, settings: ProcessSettings) -> HeaderLimits:
        return cls(settings.max_header_line_bytes, settings.max_header_bytes, settings.max_header_fields)


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a head that is over a limit."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing request heads over `limits` with 431."""

    limits: ClassVar[HeaderLimits] = HeaderLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # True while header fields may be arriving: from the end of one request until the next one's
        # headers are complete, and from a chunk's size line until its data (after the last chunk:
        # the trailer fields).
        self._counting = True
        # Bytes received while counting: bounds what the parser buffers.
        self._head_bytes = 0
        # The parsed head: its exact size (target and fields) and its number of fields.
        self._head_size = 0
        self._fields = 0
        self._refusal: str | None = None
        self._linger_budget = 0
        self._linger_timer: TimerHandle | None = None
        # The server is shutting down: the request that arrives is the connection's last.
        self._closing = False

    # uvicorn's reading of the connection, with the count in front of the parser

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            self._discard(len(data))
            return
        self._unset_keepalive_if_required()
        if self._counting:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._counting and self._head_bytes > self.limits.total_bytes:
            # Still no end of the head: what is buffered already is over the limit.
            self._refusal = f"the request head exceeds {self.limits.total_bytes} bytes"
            self._refuse()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    # Shutting down (SIGTERM, or a worker replaced after its `max_requests`)

    def shutdown(self) -> None:
        """uvicorn closes every connection without a request in progress at once: one it has just
        accepted whose first request is still on its way, and a keep-alive one whose client is sending
        its next request as the answer to the last one arrives. Either client, which did nothing
        wrong, gets a reset (and a worker replaced after its `max_requests` does this to every busy
        keep-alive client it has). Such a connection is given `NEXT_REQUEST_SECONDS` instead: a
        request that arrives is answered with `Connection: close`; then the connection closes."""
        if self._refusal is None and (self.cycle is None or self.cycle.response_complete):
            self._closing = True
            self._linger_timer = self.loop.call_later(NEXT_REQUEST_SECONDS, self._close_unless_busy)
            return
        super().shutdown()

    def _close_unless_busy(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = 0
        self._fields = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.line_bytes:
            self._stop(f"the request target exceeds {self.limits.line_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # As sent: `name: value` and the line's end.
        size = len(name) + len(value) + 4
        self._fields += 1
        self._head_size += size
        if size > self.limits.line_bytes:
            self._stop(f"a header line exceeds {self.limits.line_bytes} bytes")
        if self._fields > self.limits.fields:
            self._stop(f"the request has more than {self.limits.fields} header fields")
        if self._head_size + len(self.url) > self.limits.total_bytes:
            self._stop(f"the request head exceeds {self.limits.total_bytes} bytes")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._counting = False
        self._head_bytes = 0
        super().on_headers_complete()
        if self._closing and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_chunk_header(self) -> None:
        self._counting = True

    def on_body(self, body: bytes) -> None:
        self._counting = False
        self._head_bytes = 0
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._counting = True
        self._head_bytes = 0

    # Refusing

    def _stop(self, reason: str) -> None:
        self._refusal = reason
        raise _Refused(reason)

    def _refuse(self) -> None:
        """Answers 431 and closes the connection, unless an earlier request's answer is still being
        written on it, in which case the connection is closed at once."""
        assert self._refusal is not None
        logger.info("refused a request head from %s: %s", self.client[0] if self.client else "?", self._refusal)
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()
            return
        response = problem_response(RequestHeadersTooLarge(f"Refused: {self._refusal}."), uuid.uuid4().hex)
        content = [STATUS_LINE[431]]
        for name, value in [*self.server_state.default_headers, *response.raw_headers, (b"connection", b"close")]:
            content += [name, b": ", value, b"\r\n"]
        content += [b"\r\n", bytes(response.body)]
        self.transport.write(b"".join(content))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        # Linger: read and drop what the client is still sending, within a bound, then close.
        self._linger_budget = LINGER_BYTES
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _discard(self, size: int) -> None:
        self._linger_budget -= size
        if self._linger_budget < 0:
            self.transport.close()


def serving_protocol(settings: ProcessSettings) -> type[BoundedHttpToolsProtocol]:
    """The bounded protocol with the process's header limits, for uvicorn's `http=`."""

    class Protocol(BoundedHttpToolsProtocol):
        limits = HeaderLimits.of(settings)

    return Protocol


# Several workers: a gunicorn master and uvicorn workers


# What the master adds to the shutdown timeout before it kills a worker: the worker's own lifespan
# shutdown (closing pools, flushing spans) runs after its in-flight requests are done.
SHUTDOWN_MARGIN_SECONDS = 5


# An app that has long-lived connections to end on its own terms before the server cuts them (the
# gateway's WebSockets close with 1013) sets `app.state.before_shutdown` to an async callable.
BEFORE_SHUTDOWN = "before_shutdown"


def before_shutdown_of(app: Any) -> Callable[[], Awaitable[None]] | None:
    state = getattr(app, "state", None)
    hook: Callable[[], Awaitable[None]] | None = getattr(state, BEFORE_SHUTDOWN, None)
    return hook


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which on shutdown first lets the app close its long-lived connections:
    uvicorn itself would end every WebSocket with 1012 as its first step."""

    def __init__(self, config: uvicorn.Config, before_shutdown: Callable[[], Awaitable[None]] | None) -> None:
        super().__init__(config)
        self.before_shutdown = before_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.before_shutdown is not None:
            try:
                await self.before_shutdown()
            except Exception:
                logging.getLogger("portico").exception("closing long-lived connections before shutdown failed")
        await super().shutdown(sockets)


def gunicorn_worker(settings: ProcessSettings) -> type[UvicornWorker]:
    """uvicorn-worker's gunicorn worker, serving as `python -m <process> serve` does: the bounded
    protocol with the process's limits, no proxy headers, our access log rather than uvicorn's, and
    in-flight requests finished within `shutdown_timeout_seconds`. (uvicorn-worker passes none of
    gunicorn's graceful timeout to uvicorn, whose shutdown then waits for in-flight requests without
    bound until the master kills the worker.)"""

    class Worker(UvicornWorker):  # type: ignore[misc]
        CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
            "loop": "auto",
            "http": serving_protocol(settings),
            "proxy_headers": False,
            "access_log": False,
            "timeout_graceful_shutdown": settings.shutdown_timeout_seconds,
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


def prepare_multiprocess_metrics(process: str) -> Path:
    """Prometheus multiprocess mode for the workers about to start: every worker writes its samples to
    files in one directory (`PROMETHEUS_MULTIPROC_DIR`, or a new temporary one), and `/metrics`
    in any worker sums them all (`shared/metrics.py`). What a worker that exits (recycled or killed)
    counted is folded into an archive file (`fold_exited_worker`), so no counter ever goes backwards
    or loses what a dead worker counted, and the directory holds the files of the live workers only.

    Files of an earlier run in the directory are removed: a new master is a restart, as for one
    process."""
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in [*directory.glob("*.db"), directory / ".lock"]:
            stale.unlink(missing_ok=True)
    else:
        directory = Path(tempfile.mkdtemp(prefix=f"portico-{process}-metrics-"))
        master = os.getpid()

        def remove() -> None:
            # Workers inherit this exit hook with the fork; only the master's exit removes the files.
            if os.getpid() == master:
                shutil.rmtree(directory, ignore_errors=True)

        atexit.register(remove)
        os.environ[MULTIPROC_ENV] = str(directory)
    # prometheus_client chooses how values are stored when it is first imported, which was before
    # the variable was set: choose again, before any worker creates a metric.
    prometheus_values.ValueClass = prometheus_values.get_value_class()  # type: ignore[no-untyped-call]
    return directory


class _GunicornServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, load: Callable[[], ASGIApp], options: dict[str, Any]) -> None:
        self._load = load
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> ASGIApp:
        return self._load()


def fold_exited_worker(directory: Path, pid: int) -> None:
    """Adds what an exited worker counted (its counter, histogram and summary files) into one archive
    file per kind, and removes its files. Without this, every recycled worker would leave files
    behind: the directory would grow without bound, and every scrape would read them all. Its live
    gauges go (`mark_process_dead`); gauges of other modes are left as prometheus_client keeps them.
    """
    prometheus_multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    with samples_locked(directory, exclusive=True):
        for kind in ("counter", "histogram", "summary"):
            exited = directory / f"{kind}_{pid}.db"
            if not exited.exists():
                continue
            # The collector takes the kind from the name before the first "_" and sums the rest.
            archive = MmapedDict(str(directory / f"{kind}_archive.db"))  # type: ignore[no-untyped-call]
            try:
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(exited)):  # type: ignore[no-untyped-call]
                    total, _ = archive.read_value(key)  # type: ignore[no-untyped-call]
                    archive.write_value(key, total + value, timestamp)  # type: ignore[no-untyped-call]
            finally:
                archive.close()  # type: ignore[no-untyped-call]
            exited.unlink()


def _worker_exited(server: Any, worker: Any) -> None:
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    try:
        fold_exited_worker(Path(directory), worker.pid)
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
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
    }
    _GunicornServer(load, options).run()
