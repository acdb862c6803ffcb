"""The Grafana dashboard against what the processes really export: every panel's query reads metrics
(and labels) some process's registry has, and every family a process exports is on some panel or is
listed below as left off on purpose. The registries are the apps' own, built as `make
docs-reference` builds them for the metrics reference."""

from __future__ import annotations

import json
from pathlib import Path

import promql_parser
import pytest

from scripts import reference
from tests.conftest import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "portico.json"
# Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = frozenset({"job", "instance"})
# Families no panel shows, and why.
LEFT_OFF: dict[str, str] = {}


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Every series name the processes export (histograms as their _bucket, _sum and _count), with
    its labels."""
    series: dict[str, set[str]] = {}
    for served in reference.served_processes():
        for doc in reference.metric_docs(reference._registry_of(served)):
            names = [doc.name]
            if doc.kind == "histogram":
                names = [f"{doc.name}_bucket", f"{doc.name}_sum", f"{doc.name}_count"]
            for name in names:
                series.setdefault(name, set()).update(doc.labels, {"le"} if name.endswith("_bucket") else ())
    return series


def family(series: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if series.endswith(suffix):
            return series.removesuffix(suffix)
    return series


def queries() -> list[str]:
    dashboard = json.loads(Path(DASHBOARD).read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    found = [target["expr"] for panel in panels for target in panel["targets"]]
    variables = [variable["definition"] for variable in dashboard["templating"]["list"]]
    return found + [v.removeprefix("label_values(").split(",")[0] for v in variables]


def selected(query: str) -> tuple[set[str], set[str]]:
    """The series a query selects and every label it matches or groups by."""
    expr = promql_parser.parse(query.replace("$__rate_interval", "1m").replace("$process", "gateway"))
    names: set[str] = set()
    labels: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {query!r}"
            names.add(node.name)
            labels.update(matcher.name for matcher in node.matchers.matchers)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)

    promql_parser.walk(expr, visit)
    return names, labels


@pytest.mark.parametrize("query", queries())
def test_every_query_reads_what_a_process_exports(query, exported):
    names, labels = selected(query)
    assert names <= set(exported), f"{query!r} reads {names - set(exported)}, which no process exports"
    known = TARGET_LABELS.union(*(exported[name] for name in names))
    assert labels <= known, f"{query!r} uses labels {labels - known} that {names} do not have"


def test_every_exported_family_is_on_a_panel_or_left_off_on_purpose(exported):
    shown = {family(name) for query in queries() for name in selected(query)[0]}
    families = {family(name) for name in exported}
    assert families - shown == set(LEFT_OFF), "put these on a panel, or in LEFT_OFF with the reason"
    assert not shown - families


def test_the_dashboard_shows_what_operators_look_for():
    shown = set().union(*(selected(query)[0] for query in queries()))
    for series in (
        "http_requests_total",  # request and error rate by route
        "http_request_duration_seconds_bucket",  # latency by route
        "gateway_rate_limit_decisions_total",
        "portico_circuit_state",
        "portico_upstream_request_duration_seconds_bucket",
        "portico_webhook_queue_depth",
    ):
        assert series in shown, series
    panels = [panel for panel in json.loads(Path(DASHBOARD).read_text())["panels"] if panel["type"] != "row"]
    assert len({panel["title"] for panel in panels}) == len(panels), "panel titles are unique"
