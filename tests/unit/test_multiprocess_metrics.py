"""Prometheus multiprocess mode: a scrape and the fold of an exited worker read the sample files of
every process, including one that a process is creating at that very moment (an empty file)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.applications import Starlette

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


async def scrape(directory: Path, monkeypatch: pytest.MonkeyPatch) -> httpx.Response:
    monkeypatch.setenv(MULTIPROC_ENV, str(directory))
    app = Starlette()
    app.add_route("/metrics", metrics_endpoint(CollectorRegistry(), Networks(["127.0.0.1/32"])))
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
