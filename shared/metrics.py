"""The HTTP server metrics, labelled by route template, never by raw path (recorded by
`ObservabilityMiddleware`), and the `/metrics` route, served only to the networks allowed to read it."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from shared.networks import Networks

# No `_created` series: a timestamp per counter and histogram child that no dashboard reads, and
# half of every scrape's size.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

# Seconds: the buckets of every request-duration histogram (served and upstream), from 1 ms to 10 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

UNMATCHED = "<unmatched>"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def samples_directory() -> Path | None:
    """Multiprocess mode's directory (`shared/serving/`), None for one process."""
    configured = os.environ.get(MULTIPROC_ENV)
    return Path(configured) if configured else None


@contextlib.contextmanager
def samples_locked(directory: str | Path, *, exclusive: bool) -> Iterator[None]:
    """Multiprocess mode: a scrape reads the sample files under a shared lock, and the master folds
    an exited worker's files into the archive under an exclusive one (`shared/serving/multiprocess.py`), so a
    scrape sees the files either before the fold or after it, never half of it (a counter that
    counted twice, or not at all, for a moment would go backwards after)."""
    with (Path(directory) / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def holds_samples(path: Path) -> bool:
    """Whether a sample file can be read. A process creates its file empty and sizes it a moment
    later (prometheus_client's `MmapedDict`): read in between, it fails to parse, and it holds
    nothing yet. Files never shrink, so one that is sized stays readable."""
    return path.stat().st_size > 0


# A typed view of prometheus_client's unannotated merge (mypy checks that the real one fits it).
_merge: Callable[[list[str], bool], Iterable[Metric]] = MultiProcessCollector.merge


class SampleFiles:
    """Multiprocess mode: every process's samples in `directory`, live or exited, summed; a file that
    a process is creating at this moment is left to the next scrape (`holds_samples`). Without that,
    a scrape failed whenever a worker created its first sample of a kind, as every new worker does.

    `sparse` gauges drop their zero samples: a label set, once in a worker's file, stays there until
    the worker exits (prometheus_client removes none), so a gauge over a changing set of labels (the
    top tenants) sets those it no longer shows to 0, and they are not served."""

    def __init__(self, directory: Path, sparse: frozenset[str] = frozenset()) -> None:
        self.directory = directory
        self.sparse = sparse

    def collect(self) -> Iterable[Metric]:
        files = [str(path) for path in sorted(self.directory.glob("*.db")) if holds_samples(path)]
        metrics = list(_merge(files, True))
        for metric in metrics:
            if metric.name in self.sparse:
                metric.samples = [sample for sample in metric.samples if sample.value != 0]
        return metrics


def _read_locked(directory: Path, registry: CollectorRegistry) -> bytes:
    with samples_locked(directory, exclusive=False):
        return generate_latest(registry)


class LabelCache:
    """The children of a labelled metric, kept by their label values: `labels()` takes a lock and
    builds a key on every call, which the hot path pays per request otherwise. Label values are
    bounded by design (methods, route templates, statuses), so is this."""

    __slots__ = ("children", "metric")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.metric.labels(*values)
        return child


def latency_histogram(name: str, documentation: str, labels: tuple[str, ...], registry: CollectorRegistry) -> Histogram:
    """A request-duration histogram, on the buckets all of them share."""
    return Histogram(name, documentation, labels, registry=registry, buckets=LATENCY_BUCKETS)


class HttpMetrics:
    """The HTTP server metrics of one app, in the app's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "http_requests_total", "HTTP requests answered.", ("method", "route", "status"), registry=registry
        )
        self.duration = latency_histogram(
            "http_request_duration_seconds", "Time to answer an HTTP request.", ("method", "route"), registry
        )
        self._requests = LabelCache(self.requests)
        self._duration = LabelCache(self.duration)

    def record(self, method: str, route: str, status: str, seconds: float) -> None:
        self._requests(method, route, status).inc()
        self._duration(method, route).observe(seconds)


def metrics_endpoint(
    registry: CollectorRegistry, allowed: Networks, sparse: frozenset[str] = frozenset()
) -> Callable[[Request], Awaitable[Response]]:
    """The metrics of `registry` for peers in `allowed`; to anyone else the same 404 as a path that is
    no route. The peer is the connection's own address, never X-Forwarded-For: a forwarded address
    is whatever the client wrote, and a client behind a proxy arrives from the proxy's (private)
    address, so the route must also not be published through one. With several workers, the `sparse`
    gauges' zero samples are not served (`SampleFiles`)."""

    directory = samples_directory()
    exposed = registry
    if directory:
        # Several workers (`shared/serving/`): the samples of every worker, live or exited, summed.
        exposed = CollectorRegistry()
        exposed.register(SampleFiles(directory, sparse))

    async def metrics(request: Request) -> Response:
        client = request.scope.get("client")
        if client is None or client[0] not in allowed:
            raise HTTPException(404)
        if directory:
            # Waiting for the lock and reading every worker's files blocks: off the event loop, so a
            # scrape (or the master's fold it waits for) does not stall this worker's requests.
            body = await run_in_threadpool(_read_locked, directory, exposed)
        else:
            body = generate_latest(exposed)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return metrics
