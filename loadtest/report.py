"""The report of one load-test run: PNG plots and a Markdown summary, from the CSV files the run wrote.

`requests.csv` has one row per HTTP request (written by the locustfile), `memory.csv` one row per
process and sample (written by the runner), `journeys.csv` one row per journey-level fact (an order
retried or replayed, an SSE stream and its events). `python -m loadtest.report DIR` redraws a report.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt
from PIL import Image

from loadtest.bootstrap import PLANS
from loadtest.outcomes import (
    ERROR,
    OK,
    OUTCOMES,
    RATE_LIMITED,
    REJECTED,
    UNAVAILABLE,
)

COLORS = {OK: "#2b8a3e", REJECTED: "#1971c2", RATE_LIMITED: "#f08c00", UNAVAILABLE: "#868e96", ERROR: "#c92a2a"}

# Capacity is the best rate held over a window this long, with errors under ERROR_BUDGET of it.
CAPACITY_WINDOW_S = 10
ERROR_BUDGET = 0.01


@dataclass(frozen=True, slots=True)
class Request:
    t: float
    method: str
    route: str
    status: int
    latency_ms: float
    plan: str
    outcome: str
    error_code: str

    @property
    def key(self) -> str:
        return f"{self.method} {self.route}"


@dataclass
class Run:
    requests: list[Request]
    memory: list[tuple[float, str, int, int]] = field(default_factory=list)
    journeys: list[tuple[float, str, str, float]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    # Computed once: every per-second series reads them for each of its requests.
    @cached_property
    def start(self) -> float:
        return min(r.t for r in self.requests)

    @cached_property
    def duration(self) -> float:
        return max(1.0, max(r.t for r in self.requests) - self.start)


def read_run(directory: Path) -> Run:
    with (directory / "requests.csv").open(newline="") as f:
        requests = [
            Request(
                float(row["t"]),
                row["method"],
                row["route"],
                int(row["status"]),
                float(row["latency_ms"]),
                row["plan"],
                row["outcome"],
                row["error_code"],
            )
            for row in csv.DictReader(f)
        ]
    memory, journeys = [], []
    if (directory / "memory.csv").exists():
        with (directory / "memory.csv").open(newline="") as f:
            memory = [(float(r["t"]), r["process"], int(r["pid"]), int(r["rss_bytes"])) for r in csv.DictReader(f)]
    if (directory / "journeys.csv").exists():
        with (directory / "journeys.csv").open(newline="") as f:
            journeys = [(float(r["t"]), r["kind"], r["plan"], float(r["value"])) for r in csv.DictReader(f)]
    meta_file = directory / "run.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    return Run(requests, memory, journeys, meta)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def per_second(run: Run, requests: Iterable[Request]) -> list[int]:
    counts = [0] * (int(run.duration) + 1)
    start = run.start
    for r in requests:
        counts[int(r.t - start)] += 1
    return counts


def capacity(run: Run) -> float:
    """The highest request rate held over CAPACITY_WINDOW_S seconds with errors within ERROR_BUDGET."""
    total = per_second(run, run.requests)
    errors = per_second(run, (r for r in run.requests if r.outcome == ERROR))
    best = 0.0
    for i in range(max(1, len(total) - CAPACITY_WINDOW_S + 1)):
        done, failed = sum(total[i : i + CAPACITY_WINDOW_S]), sum(errors[i : i + CAPACITY_WINDOW_S])
        seconds = min(CAPACITY_WINDOW_S, len(total) - i)
        if done and failed <= ERROR_BUDGET * done:
            best = max(best, done / seconds)
    return best


@dataclass(frozen=True, slots=True)
class RouteStats:
    route: str
    count: int
    rate: float
    p50: float
    p95: float
    p99: float
    max: float
    errors: int
    rate_limited: int
    rejected: int


def route_stats(run: Run) -> list[RouteStats]:
    """Per route, busiest first. Latencies are of the answers the route itself gave: a 429 is the
    rate limiter's and an unserved route the router's, so neither is in them."""
    by_route: dict[str, list[Request]] = defaultdict(list)
    for r in run.requests:
        if r.outcome != UNAVAILABLE:
            by_route[r.key].append(r)
    stats = []
    for key, requests in by_route.items():
        latencies = [r.latency_ms for r in requests if r.outcome in (OK, REJECTED, ERROR) and r.status]
        outcomes = Counter(r.outcome for r in requests)
        stats.append(
            RouteStats(
                key,
                len(requests),
                len(requests) / run.duration,
                percentile(latencies, 50),
                percentile(latencies, 95),
                percentile(latencies, 99),
                max(latencies, default=math.nan),
                outcomes[ERROR],
                outcomes[RATE_LIMITED],
                outcomes[REJECTED],
            )
        )
    return sorted(stats, key=lambda s: -s.count)


def unavailable_routes(run: Run) -> dict[str, int]:
    return dict(Counter(r.key for r in run.requests if r.outcome == UNAVAILABLE).most_common())


def plan_stats(run: Run) -> dict[str, tuple[int, int]]:
    """(requests, 429s) per plan, for requests made with a tenant's credentials."""
    totals: Counter[str] = Counter()
    limited: Counter[str] = Counter()
    for r in run.requests:
        if r.plan:
            totals[r.plan] += 1
            limited[r.plan] += r.outcome == RATE_LIMITED
    return {plan: (totals[plan], limited[plan]) for plan in sorted(totals, key=_plan_order)}


def _plan_order(plan: str) -> tuple[int, str]:
    return (PLANS.index(plan) if plan in PLANS else len(PLANS), plan)


def memory_stats(run: Run) -> dict[str, tuple[float, float, float]]:
    """RSS in MiB per process: (first sample, last sample, peak)."""
    series: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for t, process, _pid, rss in run.memory:
        series[process].append((t, rss))
    mib = 1024 * 1024
    return {
        process: (points[0][1] / mib, points[-1][1] / mib, max(rss for _, rss in points) / mib)
        for process, points in sorted((p, sorted(s)) for p, s in series.items())
    }


def _smooth(values: Sequence[float], width: int = 5) -> list[float]:
    out = []
    for i in range(len(values)):
        window = values[max(0, i - width + 1) : i + 1]
        out.append(sum(window) / len(window))
    return out


def _save(fig: Any, path: Path) -> None:
    """PNG with a small palette: a few tens of kB each, fit to commit."""
    fig.savefig(path, dpi=80)
    plt.close(fig)
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def latency_rows(run: Run) -> list[tuple[str, RouteStats | None]]:
    """Every route of the run, busiest first, with its latencies; a route with no answer of its own
    (only 429s) or that the gateway does not serve is a row too, labelled so, without bars."""
    rows: list[tuple[str, RouteStats | None]] = []
    for stats in route_stats(run):
        if math.isnan(stats.p50):
            rows.append((f"{stats.route} (no answer of its own: {stats.rate_limited} answered 429)", None))
        else:
            rows.append((stats.route, stats))
    served = {stats.route for stats in route_stats(run)}
    rows += [(f"{route} (not served)", None) for route in unavailable_routes(run) if route not in served]
    return rows


def plot_latency(run: Run, path: Path) -> None:
    rows = latency_rows(run)[::-1]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.32 * len(rows) + 1.2)))
    height = 0.27
    for offset, (label, attr, color) in enumerate(
        (("p50", "p50", "#a5d8ff"), ("p95", "p95", "#339af0"), ("p99", "p99", "#1864ab"))
    ):
        drawn = [(i, stats) for i, (_, stats) in enumerate(rows) if stats is not None]
        ax.barh(
            [i + (offset - 1) * height for i, _ in drawn],
            [getattr(stats, attr) for _, stats in drawn],
            height,
            label=label,
            color=color,
        )
    ax.set_yticks(list(range(len(rows))), [label for label, _ in rows], fontsize=7)
    ax.set_xlabel("latency (ms)")
    ax.set_xscale("log")
    ax.set_title("Latency percentiles per route (answers of the route itself)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_throughput(run: Run, path: Path) -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 4.6), sharex=True, height_ratios=(2, 1))
    seconds = list(range(int(run.duration) + 1))
    stacked = [_smooth(per_second(run, (r for r in run.requests if r.outcome == o))) for o in OUTCOMES]
    top.stackplot(seconds, stacked, labels=OUTCOMES, colors=[COLORS[o] for o in OUTCOMES], alpha=0.85)
    top.set_ylabel("requests/s")
    top.set_title("Throughput by outcome (5 s moving average)", fontsize=10)
    top.legend(fontsize=7, loc="upper left", ncol=5)
    top.grid(alpha=0.3)
    errors = _smooth(per_second(run, (r for r in run.requests if r.outcome == ERROR)))
    bottom.plot(seconds, errors, color=COLORS[ERROR])
    bottom.set_ylabel("errors/s")
    bottom.set_xlabel("seconds since start")
    bottom.set_ylim(bottom=0, top=max(1.0, max(errors, default=0) * 1.2))
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_rate_limits(run: Run, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2), width_ratios=(2, 1))
    seconds = list(range(int(run.duration) + 1))
    stats = plan_stats(run)
    for plan in stats:
        limited = per_second(run, (r for r in run.requests if r.plan == plan and r.outcome == RATE_LIMITED))
        left.plot(seconds, _smooth(limited), label=plan)
    left.set_title("429 per second by plan", fontsize=10)
    left.set_xlabel("seconds since start")
    left.set_ylabel("429/s")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    shares = [100 * limited / total if total else 0 for total, limited in stats.values()]
    right.bar(list(stats), shares, color="#f08c00")
    right.set_title("share of requests refused", fontsize=10)
    right.set_ylabel("%")
    right.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_memory(run: Run, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.2))
    series: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for t, process, _pid, rss in run.memory:
        series[process].append((t - run.start, rss))
    for process, points in sorted(series.items()):
        points.sort()
        ax.plot([t for t, _ in points], [rss / 1024 / 1024 for _, rss in points], label=process)
    ax.set_title("Resident memory per process", fontsize=10)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("MiB")
    ax.legend(fontsize=7, ncol=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def summary(run: Run, images: Sequence[str]) -> str:
    outcomes = Counter(r.outcome for r in run.requests)
    total = len(run.requests)
    meta = run.meta
    lines = [
        f"# Load test: {meta.get('mode', 'run')}, {run.duration:.0f} s of load",
        "",
        f"Target `{meta.get('host', '?')}`, {meta.get('users', '?')} users for {meta.get('duration', '?')}, "
        f"started {meta.get('started', '?')}"
        + (f", paced at {meta['target_rps']:.0f} req/s" if meta.get("target_rps") else "")
        + ". Figures from a shared machine are indicative.",
        "",
        "| requests | mean req/s | peak req/s (best 10 s, <1% errors) | errors | rejected (4xx by design) | 429 "
        "| unserved routes |",
        "|---|---|---|---|---|---|---|",
        f"| {total} | {total / run.duration:.1f} | {capacity(run):.1f} | {outcomes[ERROR]} "
        f"({100 * outcomes[ERROR] / max(total, 1):.2f}%) | {outcomes[REJECTED]} | {outcomes[RATE_LIMITED]} "
        f"| {outcomes[UNAVAILABLE]} |",
        "",
        "## Latency per route (ms)",
        "",
        "| route | requests | req/s | p50 | p95 | p99 | max | errors | 429 | rejected |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in route_stats(run):
        lines.append(
            f"| `{s.route}` | {s.count} | {s.rate:.1f} | {_ms(s.p50)} | {_ms(s.p95)} | {_ms(s.p99)} | {_ms(s.max)} "
            f"| {s.errors} | {s.rate_limited} | {s.rejected} |"
        )
    lines += ["", "## 429 by plan", "", "| plan | requests | 429 | share |", "|---|---|---|---|"]
    for plan, (requests, limited) in plan_stats(run).items():
        lines.append(f"| {plan} | {requests} | {limited} | {100 * limited / max(requests, 1):.1f}% |")
    unserved = unavailable_routes(run)
    if unserved:
        lines += [
            "",
            "## Routes this gateway does not serve yet",
            "",
            "Answered 404 or 405 by the router (no such route): counted apart, not as errors.",
            "",
            "| route | requests |",
            "|---|---|",
            *(f"| `{route}` | {count} |" for route, count in unserved.items()),
        ]
    facts: Counter[str] = Counter()
    for _t, kind, _plan, value in run.journeys:
        facts[kind] += value
    if facts:
        lines += ["", "## Journeys", "", "| what | count |", "|---|---|"]
        lines += [f"| {kind.replace('_', ' ')} | {value:g} |" for kind, value in sorted(facts.items())]
    errors = Counter(
        f"{r.key} -> {r.status or 'no answer'} {r.error_code}".strip() for r in run.requests if r.outcome == ERROR
    )
    if errors:
        lines += ["", "## Errors", "", "| request -> answer | count |", "|---|---|"]
        lines += [f"| `{what}` | {count} |" for what, count in errors.most_common(15)]
    memory = memory_stats(run)
    if memory:
        lines += ["", "## Memory (RSS, MiB)", "", "| process | first | last | peak | growth |", "|---|---|---|---|---|"]
        for process, (first, last, peak) in memory.items():
            lines.append(f"| {process} | {first:.1f} | {last:.1f} | {peak:.1f} | {last - first:+.1f} |")
    lines += ["", *(f"![{Path(image).stem}]({image})" for image in images), ""]
    return "\n".join(lines)


def write_report(directory: Path) -> Path:
    """Draws the plots and writes summary.md (and summary.json) into `directory`; returns summary.md."""
    run = read_run(directory)
    if not run.requests:
        raise ValueError(f"{directory}/requests.csv holds no request")
    images = ["latency.png", "throughput.png", "rate_limits.png"]
    plot_latency(run, directory / "latency.png")
    plot_throughput(run, directory / "throughput.png")
    plot_rate_limits(run, directory / "rate_limits.png")
    if run.memory:
        plot_memory(run, directory / "memory.png")
        images.append("memory.png")
    outcomes = Counter(r.outcome for r in run.requests)
    machine = {
        "requests": len(run.requests),
        "duration_s": run.duration,
        "capacity_rps": capacity(run),
        "outcomes": dict(outcomes),
        "unavailable_routes": unavailable_routes(run),
        "memory_mib": memory_stats(run),
    }
    (directory / "summary.json").write_text(json.dumps(machine, indent=2) + "\n")
    path = directory / "summary.md"
    path.write_text(summary(run, images))
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m loadtest.report DIRECTORY")
    print(write_report(Path(sys.argv[1])))
