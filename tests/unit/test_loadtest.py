"""The load-test kit's report, from runs written here: the figures it states are the ones the rows hold."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from loadtest import report
from loadtest.outcomes import (
    ERROR,
    JOURNEY_FIELDS,
    MEMORY_FIELDS,
    OK,
    RATE_LIMITED,
    REJECTED,
    REQUEST_FIELDS,
    UNAVAILABLE,
    classify,
)

T0 = 1_800_000_000.0


def write_run(directory: Path, requests: list[tuple], memory: list[tuple] = (), journeys: list[tuple] = ()) -> Path:
    for name, fields, rows in (
        ("requests.csv", REQUEST_FIELDS, requests),
        ("memory.csv", MEMORY_FIELDS, memory),
        ("journeys.csv", JOURNEY_FIELDS, journeys),
    ):
        with (directory / name).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(fields)
            writer.writerows(rows)
    (directory / "run.json").write_text(json.dumps({"mode": "run", "host": "http://gw", "users": 3, "duration": "60s"}))
    return directory


def row(t, route="/v1/products", status=200, latency=10.0, plan="pro", outcome=OK, code="", method="GET"):
    return (T0 + t, method, route, status, latency, plan, outcome, code)


@pytest.mark.parametrize(
    ("status", "code", "pending", "outcome"),
    [
        (200, "", False, OK),
        (429, "RATE_LIMITED", False, RATE_LIMITED),
        (404, "NOT_FOUND", True, UNAVAILABLE),
        (405, "METHOD_NOT_ALLOWED", True, UNAVAILABLE),
        (404, "NOT_FOUND", False, ERROR),  # a route the kit relies on is missing: that is an error
        (404, "USER_NOT_FOUND", True, ERROR),  # the route exists and answered
        (422, "INSUFFICIENT_STOCK", False, REJECTED),
        (422, "VALIDATION_FAILED", False, ERROR),
        (503, "CIRCUIT_OPEN", True, ERROR),
        (0, "", False, ERROR),
    ],
)
def test_classify(status, code, pending, outcome):
    body = {"error_code": code} if code else None
    assert classify(status, body, (200,), ("INSUFFICIENT_STOCK",), pending) == outcome


def test_percentiles_interpolate_between_ranks():
    values = [float(v) for v in range(1, 101)]
    assert report.percentile(values, 50) == pytest.approx(50.5)
    assert report.percentile(values, 95) == pytest.approx(95.05)
    assert report.percentile(values, 100) == 100
    assert report.percentile([7.0], 99) == 7


def test_route_latency_leaves_out_refusals_by_the_edge(tmp_path):
    rows = [row(i / 10, latency=float(i)) for i in range(1, 101)]
    rows += [row(11, status=429, latency=5000.0, outcome=RATE_LIMITED, code="RATE_LIMITED")] * 5
    rows += [row(12, route="/v1/events", status=404, latency=1.0, outcome=UNAVAILABLE, code="NOT_FOUND")] * 3
    run = report.read_run(write_run(tmp_path, rows))
    (stats,) = report.route_stats(run)
    assert stats.route == "GET /v1/products"
    assert stats.count == 105
    assert stats.rate_limited == 5
    assert stats.p50 == pytest.approx(50.5)
    assert stats.max == 100
    assert report.unavailable_routes(run) == {"GET /v1/events": 3}


def test_capacity_is_the_best_window_within_the_error_budget(tmp_path):
    rows = []
    for second in range(30):
        busy = 10 <= second < 20
        for i in range(50 if busy else 20):
            failed = busy and i < 5  # the busiest stretch fails 10%: not sustainable
            rows.append(row(second + i / 100, status=503 if failed else 200, outcome=ERROR if failed else OK))
    run = report.read_run(write_run(tmp_path, rows))
    # Any 10 s window that touches the busy stretch exceeds 1% errors, so the calm 20 req/s is capacity.
    assert report.capacity(run) == pytest.approx(20)


def test_report_files_and_figures(tmp_path):
    rows = [row(i / 2, latency=20.0) for i in range(120)]
    rows += [row(i, plan="free", status=429, outcome=RATE_LIMITED, code="RATE_LIMITED") for i in range(30)]
    rows += [row(i, plan="free") for i in range(10)]
    rows += [row(5, route="/v1/orders", method="POST", status=422, outcome=REJECTED, code="INSUFFICIENT_STOCK")]
    rows += [row(6, route="/v1/orders", method="POST", status=502, outcome=ERROR, code="DOWNSTREAM_BAD_RESPONSE")]
    rows += [row(7, route="/v1/orders/validate", method="POST", status=405, outcome=UNAVAILABLE)]
    memory = [
        (T0 + t, name, pid, (100 + t) * 1024 * 1024)
        for t in range(0, 60, 5)
        for pid, name in ((1, "gateway"), (2, "users"))
    ]
    journeys = [(T0 + 3, "order_retries", "pro", 2), (T0 + 4, "sse_events_received", "pro", 7)]
    summary = report.write_report(write_run(tmp_path, rows, memory, journeys))

    text = summary.read_text()
    assert "| free | 40 | 30 | 75.0% |" in text
    assert "| pro | 123 | 0 | 0.0% |" in text
    assert "`POST /v1/orders/validate` | 1 |" in text, "unserved routes are listed apart"
    assert "`POST /v1/orders -> 502 DOWNSTREAM_BAD_RESPONSE` | 1 |" in text
    assert "| order retries | 2 |" in text
    assert "| gateway | 100.0 | 155.0 | 155.0 | +55.0 |" in text
    machine = json.loads((tmp_path / "summary.json").read_text())
    assert machine["outcomes"] == {OK: 130, RATE_LIMITED: 30, REJECTED: 1, ERROR: 1, UNAVAILABLE: 1}
    for image in ("latency.png", "throughput.png", "rate_limits.png", "memory.png"):
        assert f"]({image})" in text
        path = tmp_path / image
        assert path.stat().st_size < 60_000, "small enough to commit"
        with Image.open(path) as png:
            assert png.format == "PNG"
            assert png.width >= 600


def test_every_route_of_the_run_is_on_the_latency_chart(tmp_path, monkeypatch):
    """Seventeen routes, as the kit's journeys make: the busy ones, the quiet ones, one whose every
    request was refused with 429 and one the gateway does not serve; each is a row of the chart."""
    routes = [f"/v1/route-{n:02d}" for n in range(15)]
    rows = [row(i / 10, route=route, latency=10.0 + n) for n, route in enumerate(routes) for i in range(n + 1)]
    rows += [row(3, route="/v1/events", status=429, outcome=RATE_LIMITED, code="RATE_LIMITED")] * 2
    rows += [row(4, route="/v1/orders/validate", method="POST", status=405, outcome=UNAVAILABLE)]
    run = report.read_run(write_run(tmp_path, rows))
    drawn = []

    def keep_labels(fig, path):
        drawn.extend(label.get_text() for label in fig.axes[0].get_yticklabels())
        report.plt.close(fig)

    monkeypatch.setattr(report, "_save", keep_labels)
    report.plot_latency(run, tmp_path / "latency.png")
    assert len(drawn) == 17
    for route in routes:
        assert f"GET {route}" in drawn
    assert "GET /v1/events (no answer of its own: 2 answered 429)" in drawn
    assert "POST /v1/orders/validate (not served)" in drawn
    # Busiest first, from the top of the chart.
    assert drawn[-1] == f"GET {routes[-1]}"


def test_an_empty_run_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no request"):
        report.write_report(write_run(tmp_path, []))


def test_the_runner_and_the_locustfile_load():
    """The kit's entry points import (the locustfile in a process of its own: locust patches the
    standard library with gevent on import)."""
    done = subprocess.run(
        [sys.executable, "-c", "import loadtest.locustfile as f; print(sorted(f.__dict__))"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for user in ("Shopper", "ApiClient", "Merchant", "SseListener", "Onboarding"):
        assert user in done.stdout
    helped = subprocess.run(
        [sys.executable, "-m", "loadtest", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert helped.returncode == 0, helped.stderr
    assert "--soak" in helped.stdout
