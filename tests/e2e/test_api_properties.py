"""Property-based tests of the public API against its own OpenAPI document (schemathesis).

Schemathesis reads the live gateway's `/openapi.json` and sends every operation requests generated
from it: the documented examples, valid and invalid values of each parameter and body, methods a path
does not serve. Every answer must be documented (status, content type, headers, schema), no input
may get a 5xx, every error must be problem+json, and an `Allow` header must name exactly the methods
the path serves.

A gateway of the test's own, in front of the session's services, under its own Redis key prefix: the
generated requests spend its quotas, not those of the rest of the suite. The requests carry a pro
tenant's token (webhooks need that plan). Bounded to stay within seconds: few examples per operation,
no deadline (the machine is shared), no example database.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from scripts.devstack import Stack, free_port
from shared.errors import PROBLEM_JSON
from tests.conftest import ROOT
from tests.edge_support import Tenant, gateway_settings, signup, unique_prefix

# Hypothesis keeps what it learns of the code (constants, Unicode tables) under var/, not in the tree.
set_hypothesis_home_dir(ROOT / "var" / "hypothesis")

# Few cases per operation: the point is breadth (every operation, every documented answer), and the
# whole suite must stay within minutes.
MAX_EXAMPLES = 4


@pytest.fixture(scope="module")
def api_gateway(stack: Stack) -> Iterator[str]:
    own = Stack(
        ports={**stack.ports, "gateway": free_port()},
        env=stack.env,
        env_for={"gateway": {"GATEWAY_REDIS_KEY_PREFIX": unique_prefix(stack.env["GATEWAY_REDIS_KEY_PREFIX"])}},
        cwd=ROOT,
        workers=(),
    )
    own.start_one("gateway")
    try:
        own.wait_ready(60)
        yield own.url()
    finally:
        own.stop()


@pytest.fixture(scope="module")
async def api_tenant(api_gateway: str) -> Tenant:
    async with httpx.AsyncClient(base_url=api_gateway, timeout=30) as client:
        return await signup(client, "pro")


def _document() -> dict[str, Any]:
    """The gateway's document, as the process serves it (`test_the_live_document_is_the_one_tested`).
    Read here rather than from the live process: schemathesis parametrizes the test when it is
    collected, before any fixture has started a process."""
    # With Redis, as every deployment of several instances (readiness then checks it too).
    return create_app(gateway_settings(None, redis_url="redis://127.0.0.1:6379/0")).openapi()


DOCUMENT = _document()
CONFIG = SchemathesisConfig.from_dict(
    {
        # No cache directory (it would land in the working tree).
        "cache": {"enabled": False},
        # The examples and fuzzing phases, bounded by MAX_EXAMPLES. The coverage phase sends every
        # boundary of every constraint (minutes for this API); the methods a path does not serve, which
        # it would also send, are `test_every_path_names_the_methods_it_serves`'s.
        "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
    }
)
# The event stream stays open while the credentials work: its answers are tests/e2e/test_realtime.py's.
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG).exclude(path="/v1/events")
# What every answer must be: no 5xx; a status, content type, headers and body the document gives the
# operation; and an error as problem+json.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_the_live_document_is_the_one_tested(api_gateway: str) -> None:
    live = httpx.get(f"{api_gateway}/openapi.json", timeout=30).json()
    # The description quotes the process's settings; everything else is the routes'.
    assert {**live, "info": None} == {**DOCUMENT, "info": None}


def _errors_are_problems(ctx: Any, response: Any, case: Any) -> bool:
    """Every 4xx and 5xx is `application/problem+json` with the members of a problem."""
    if response.status_code < 400:
        return True
    media_type = response.headers.get("content-type", [""])[0].split(";")[0].strip()
    assert media_type == PROBLEM_JSON, f"{response.status_code} answered as {media_type!r}: {response.text[:200]}"
    body = response.json()
    assert body["status"] == response.status_code, body
    for member in ("type", "title", "error_code"):
        assert body[member], body
    return True


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_answers_as_its_document_says(case: Any, api_gateway: str, api_tenant: Tenant) -> None:
    # The tenant's token in place of the credentials schemathesis makes up, which would only ever be
    # refused before the route is reached (an unknown key, a token that does not verify, both at once).
    headers = {name: value for name, value in (case.headers or {}).items() if name.lower() != "x-api-key"}
    case.headers = {**headers, **api_tenant.auth}
    case.call_and_validate(base_url=api_gateway, checks=[*CHECKS, _errors_are_problems], timeout=30)


def _matches(template: str, path: str) -> bool:
    return re.fullmatch(re.sub(r"{\w+}", "[^/]+", template), path) is not None


def _concrete(template: str) -> str:
    return re.sub(r"{\w+}", "x1", template)


@pytest.mark.parametrize("template", sorted(DOCUMENT["paths"]))
async def test_every_path_names_the_methods_it_serves(api_gateway: str, api_tenant: Tenant, template: str) -> None:
    """A method a path does not serve is 405 problem+json, and `Allow` names exactly the documented
    methods of every route the path is one of (`/v1/users/me` is also `/v1/users/{user_id}`)."""
    path = _concrete(template)
    served = {
        method.upper()
        for other, item in DOCUMENT["paths"].items()
        if _matches(other, path)
        for method in item
        if method in ("get", "put", "post", "patch", "delete")
    }
    async with httpx.AsyncClient(base_url=api_gateway, headers=api_tenant.auth, timeout=30) as client:
        for method in sorted({"OPTIONS", "PUT", "DELETE", "PATCH", "POST", "GET"} - served):
            answer = await client.request(method, path)
            where = f"{method} {path}"
            assert answer.status_code == 405, f"{where}: {answer.status_code} {answer.text[:200]}"
            assert answer.headers["content-type"] == PROBLEM_JSON, where
            assert set(answer.headers["allow"].split(", ")) == served, f"{where}: Allow {answer.headers['allow']}"


async def test_a_graphql_request_without_a_content_type_is_a_problem(api_gateway: str, api_tenant: Tenant) -> None:
    async with httpx.AsyncClient(base_url=api_gateway, headers=api_tenant.auth, timeout=30) as client:
        answer = await client.post("/graphql", content=b'{"query": "{ me { id } }"}')
    assert answer.status_code == 415, answer.text
    assert answer.headers["content-type"] == PROBLEM_JSON
    assert answer.json()["error_code"] == "UNSUPPORTED_MEDIA_TYPE"
