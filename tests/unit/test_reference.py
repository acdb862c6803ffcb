"""The docs site's reference pages are generated from the code (`make docs-reference`): they must be
what the code gives now, and everything they list must say what it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import Field

from gateway.edge.metrics import EdgeMetrics
from gateway.edge.ratelimit import MemoryRateLimitStore, RateLimiter, RateLimits
from gateway.edge.store import StoreCaller
from gateway.settings import GatewaySettings
from scripts import reference
from shared.contract import Identity

ROOT = Path(__file__).resolve().parents[2]


def test_the_reference_pages_are_what_the_code_gives():
    stale = [str(path.relative_to(ROOT)) for path in reference.stale_pages()]
    assert not stale, f"out of date: {', '.join(stale)}; run `make docs-reference` and commit the pages"


def test_a_setting_without_a_description_stops_the_generation_naming_it():
    class Extended(GatewaySettings):
        shiny_new_limit: int = Field(default=3, ge=1)

    problems: list[str] = []
    rows = reference._setting_rows(Extended, ["shiny_new_limit", "port"], lambda n: f"GATEWAY_{n.upper()}", problems)
    assert [row[0] for row in rows] == ["`GATEWAY_PORT`"]
    [problem] = problems
    assert "GATEWAY_SHINY_NEW_LIMIT" in problem
    assert "docstring" in problem


def test_every_error_class_says_when_it_is_answered():
    missing = [reference._path(cls) for cls in reference.error_classes() if not reference.when_of(cls)]
    assert not missing, f"give these error classes a docstring saying when they are answered: {missing}"
    # An entry kept for a class that has a docstring of its own, or that is gone, must go.
    classes = {reference._path(cls): cls for cls in reference.error_classes()}
    for path in reference.WHEN_ELSEWHERE:
        assert path in classes, f"WHEN_ELSEWHERE names {path}, which is no error class: remove the entry"
        assert not vars(classes[path]).get("__doc__") or path == "shared.errors.PorticoError", (
            f"{path} has a docstring now: remove its WHEN_ELSEWHERE entry"
        )


def test_every_error_code_the_code_answers_with_is_in_the_reference():
    """A code passed as a literal (`error_code="..."`) rather than through a class would be missing from
    the errors page: every one must be a class's."""
    codes = {cls.error_code for cls in reference.error_classes()}
    literal = re.compile(r"""(?:error_code=|["']error_code["']\s*:\s*)["']([A-Z][A-Z0-9_]+)["']""")
    found = {}
    for package in reference.PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for code in literal.findall(path.read_text()):
                found[code] = path.relative_to(ROOT)
    unknown = {code: str(path) for code, path in found.items() if code not in codes}
    assert not unknown, f"error codes without an error class (so missing from docs/reference/errors.md): {unknown}"


def test_the_headers_page_describes_every_header_the_edge_lists():
    lists = reference.header_lists()
    for name in lists.cors_request | lists.forwarded_request:
        assert name in lists.openapi_request or name in reference.REQUEST_HEADERS, name
    for name in lists.cors_exposed | lists.forwarded_response:
        assert name in lists.openapi_response or name in reference.RESPONSE_HEADERS, name


def _hand_written_pages() -> list[Path]:
    generated = {reference.REFERENCE / name for name in reference.PAGES}
    return [ROOT / "README.md", *(p for p in (ROOT / "docs").rglob("*.md") if p not in generated)]


@pytest.mark.parametrize("header", ["RateLimit-Policy", "RateLimit"])
def test_rate_limit_examples_in_the_docs_name_the_policies_the_gateway_sends(header):
    """The plan quotas are named after the plan (`"pro"`), the anonymous quota `"anonymous"`, the monthly
    quota `"monthly"`, a route's quota after its `"METHOD /route/template"`: every example in the docs
    uses those names."""
    settings = GatewaySettings.model_construct(rate_limit_routes={})
    metrics = EdgeMetrics(CollectorRegistry())
    caller = StoreCaller("rate_limit", io=False, mode="local", metrics=metrics)
    limiter = RateLimiter(MemoryRateLimitStore(), caller)
    stage = RateLimits(settings, limiter, metrics, {})
    # The monthly quota's policy, as the stage makes it for any tenant.
    monthly = stage.monthly.policy(Identity(subject="u", tenant_id="t", plan="pro")).name
    names = {policy.name for policy in stage.plans.values()} | {stage.anonymous.name, monthly}
    assert "pro" in names
    examples = 0
    for page in _hand_written_pages():
        for line in re.findall(rf"^{header}: (.+)$", page.read_text(), re.M):
            for name in re.findall(r'"([^"]+)";', line):
                examples += 1
                assert name in names or re.match(r"^[A-Z]+ /", name), f"{page.relative_to(ROOT)}: {line}"
    assert examples, f"no {header} example found in the docs"
