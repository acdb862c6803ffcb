"""Prometheus multiprocess mode: a scrape and the fold of an exited worker read the sample files of
every process, including one that a process is creating at that very moment (an empty file); an
exited worker leaves no file behind; the top tenants' gauge drops a tenant as well as it can."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client import values as prometheus_values
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.applications import Starlette

from gateway.edge.metering import MemoryUsageStore, Metering
from gateway.edge.metrics import SPARSE_GAUGES, TOP_TENANTS, EdgeMetrics
from gateway.edge.store import StoreCaller
from shared.context import RequestContext
from shared.contract import Identity
from shared.metrics import MULTIPROC_ENV, metrics_endpoint
from shared.networks import Networks
from shared.serving.multiprocess import fold_exited_worker

HELP = "HTTP requests answered."
LIVE = re.compile(r'^http_requests_total\{method="GET",route="/health/live",status="200"\} (\S+)$', re.MULTILINE)


def count_in(path: Path, value: float) -> None:
    """A sample file as a worker leaves it, having answered `value` live probes."""
    samples = MmapedDict(str(path))
    try:
        key = mmap_key(
            "http_requests", "http_requests_total", ["method", "route", "status"], ["GET", "/health/live", "200"], HELP
        )
        samples.write_value(key, value, 0.0)
    finally:
        samples.close()


def being_created(path: Path) -> None:
    """A sample file as a process leaves it between creating it and sizing it."""
    path.touch()


async def scrape(
    directory: Path, monkeypatch: pytest.MonkeyPatch, sparse: frozenset[str] = frozenset()
) -> httpx.Response:
    monkeypatch.setenv(MULTIPROC_ENV, str(directory))
    app = Starlette()
    app.add_route("/metrics", metrics_endpoint(CollectorRegistry(), Networks(["127.0.0.1/32"]), sparse))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        return await client.get("/metrics")


async def test_a_scrape_sums_every_worker_while_one_creates_its_files(tmp_path, monkeypatch):
    count_in(tmp_path / "counter_archive.db", 5)
    count_in(tmp_path / "counter_101.db", 2)
    for name in ("counter_102.db", "histogram_102.db", "gauge_livemax_102.db"):
        being_created(tmp_path / name)
    # What prometheus_client's own collector does with such a file.
    with pytest.raises(struct.error):
        MultiProcessCollector.merge([str(tmp_path / "counter_102.db")])

    response = await scrape(tmp_path, monkeypatch)

    assert response.status_code == 200, response.text
    assert [float(value) for value in LIVE.findall(response.text)] == [7.0]


def test_folding_a_worker_killed_while_it_created_a_file_drops_that_file(tmp_path):
    count_in(tmp_path / "counter_archive.db", 5)
    count_in(tmp_path / "counter_201.db", 3)
    being_created(tmp_path / "histogram_201.db")

    fold_exited_worker(tmp_path, 201)

    assert sorted(path.name for path in tmp_path.glob("*.db")) == ["counter_archive.db"]
    (_, total, _, _), *rest = MmapedDict.read_all_values_from_file(str(tmp_path / "counter_archive.db"))
    assert (total, rest) == (8.0, [])


def test_folding_a_worker_removes_its_gauges_of_every_mode(tmp_path):
    for name in ("gauge_all_301.db", "gauge_livesum_301.db", "gauge_max_301.db", "gauge_all_302.db"):
        count_in(tmp_path / name, 1)

    fold_exited_worker(tmp_path, 301)

    assert sorted(path.name for path in tmp_path.glob("*.db")) == ["gauge_all_302.db"]


def top_tenants(registry: CollectorRegistry) -> dict[str, float]:
    return {
        sample.labels["tenant"]: sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "portico_usage_top_tenant_requests"
    }


def metering(registry: CollectorRegistry) -> Metering:
    metrics = EdgeMetrics(registry)
    caller = StoreCaller("usage", io=False, mode="open", metrics=metrics)
    return Metering(MemoryUsageStore(86_400), caller, metrics)


def answer(meter: Metering, tenant: str, times: int) -> None:
    context = RequestContext("r", principal=Identity(subject="u", tenant_id=tenant), route="/v1/products")
    for _ in range(times):
        meter.count(context, 200)


def test_a_tenant_out_of_the_top_leaves_the_gauge():
    registry = CollectorRegistry()
    meter = metering(registry)
    answer(meter, "early", 1)
    meter.export_top_tenants()
    assert top_tenants(registry) == {"early": 1.0}

    for rank in range(TOP_TENANTS):
        answer(meter, f"busy-{rank}", 2)
    meter.export_top_tenants()

    assert top_tenants(registry) == {f"busy-{rank}": 2.0 for rank in range(TOP_TENANTS)}


async def test_with_several_workers_a_tenant_out_of_the_top_is_not_served(monkeypatch, tmp_path):
    # As in a worker: the gauge's values in this process's sample file.
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    monkeypatch.setattr(prometheus_values, "ValueClass", prometheus_values.MultiProcessValue())
    meter = metering(CollectorRegistry())
    answer(meter, "early", 1)
    meter.export_top_tenants()
    for rank in range(TOP_TENANTS):
        answer(meter, f"busy-{rank}", 2)
    meter.export_top_tenants()

    # The label set of the tenant that left stays in the file, at 0, and is not served.
    served = (await scrape(tmp_path, monkeypatch, SPARSE_GAUGES)).text
    tenants = dict(re.findall(r'^portico_usage_top_tenant_requests\{tenant="([^"]+)"\} (\S+)$', served, re.MULTILINE))
    assert tenants == {f"busy-{rank}": "2.0" for rank in range(TOP_TENANTS)}
