"""The README's walkthrough, run as printed, against the embedded defaults `make run` uses
(SQLite per service, in-process gateway stores, the delivery worker), on free ports; and, on that
stack, a delivery's trace from the order that caused it to the attempt."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from scripts.devstack import PROCESSES, Stack, free_port
from tests.e2e.test_webhooks_flow import Shop
from tests.otlp import OtlpReceiver, ReceivedSpan
from tests.webhook_support import Receiver, eventually

ROOT = Path(__file__).resolve().parents[2]
# The first test also pays for migrating and starting the module's stack (on a busy machine that alone
# can take minutes), then runs the walkthrough twice.
pytestmark = pytest.mark.timeout(600)


# The docs site's getting-started page includes the README's walkthrough between these markers
# (pymdownx.snippets), so the block run here is the one both print.
SNIPPET_START = "<!-- --8<-- [start:walkthrough] -->"
SNIPPET_END = "<!-- --8<-- [end:walkthrough] -->"


def walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Walkthrough") :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, "the README has no walkthrough block"
    return match.group(1)


def test_the_docs_site_shows_the_walkthrough_this_test_runs():
    readme = (ROOT / "README.md").read_text()
    included = readme[readme.index(SNIPPET_START) : readme.index(SNIPPET_END)]
    assert f"```sh\n{walkthrough()}```" in included
    page = (ROOT / "docs" / "getting-started.md").read_text()
    assert '--8<-- "README.md:walkthrough"' in page


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory, otlp: OtlpReceiver):
    if shutil.which("curl") is None:
        pytest.fail("curl is needed to run the README walkthrough")
    workdir = tmp_path_factory.mktemp("embedded")
    stack = Stack(
        ports={name: free_port() for name in PROCESSES},
        env={
            "WEBHOOKS_ALLOW_PRIVATE_URLS": "true",
            "PYTHONUNBUFFERED": "1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
        log_dir=workdir / "log",
        cwd=workdir,
    )
    stack.migrate()
    try:
        stack.start(timeout=180)
        yield stack
    finally:
        stack.stop()


def run_walkthrough(script: str) -> str:
    # Its own process group: the receiver it starts in the background goes too, whatever happens.
    proc = subprocess.Popen(
        ["bash", "-eo", "pipefail", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err + out
    return out


def check_walkthrough_output(out: str) -> str:
    """Checks one run's output against what the walkthrough's comments promise; answers its admin's email."""
    emails = re.findall(r'"email":"(admin-[0-9a-f]{8}@acme\.example\.com)"', out)
    assert emails, out
    # Who am I: the admin the tenant was created with, answered by /v1/users/me itself (the creation
    # answer prints the same email, so the check is on the /me line alone).
    [me] = re.findall(r"^(\{.*\}) me: 200$", out, re.M)
    assert json.loads(me)["email"] == emails[0]
    assert json.loads(me)["role"] == "admin"
    assert '"stock_after":15' in out
    assert out.lower().count("idempotent-replayed: true") == 1
    assert '"stock":13' in out
    assert '"status":"cancelled"' in out
    # The second cancel of the same order is refused.
    assert re.search(r'"error_code":"ORDER_ALREADY_CANCELLED".* 409$', out, re.M), out
    assert '"stock":15' in out
    # The event stream: the first order's two events from Last-Event-ID 0, then the next one live.
    sse = re.findall(r"^id: (\d+)\nevent: (order\.\w+)\ndata: (\{.*\})$", out, re.M)
    assert [kind for _, kind, _ in sse][:3] == ["order.created", "order.cancelled", "order.created"], out
    assert [int(i) for i, _, _ in sse] == sorted({int(i) for i, _, _ in sse})
    assert '"type":"order.created"' in sse[0][2]
    # The endpoint's secret is printed once, in the creation answer; reading the endpoint shows none.
    assert len(re.findall(r'"secret":"whsec_[A-Za-z0-9+/=]+"', out)) == 1, out
    assert out.count("whsec_") == 1, out
    assert '"event_type":"order.created"' in out
    assert '"event_type":"order.cancelled"' in out
    # Deliveries arrived at the local receiver, which verified both events, then the replay, which
    # carries the same webhook-id.
    verified = re.findall(r"^verified webhook-id=(msg_\w+) type=(order\.\w+) order=\S+$", out, re.M)
    assert sorted({kind for _, kind in verified}) == ["order.cancelled", "order.created"], out
    assert len(verified) == 3, out
    assert len({webhook_id for webhook_id, _ in verified}) == 2
    assert out.count('"status":"succeeded"') >= 2
    assert '"attempt_log":[{"at":' in out
    assert " 202\n" in out
    assert "ratelimit-policy:" in out.lower()
    assert '"error_code":"INSUFFICIENT_SCOPE"' in out
    assert "revoke: 204" in out
    assert '"error_code":"INVALID_API_KEY"' in out
    assert '"error_code":"PLAN_UPGRADE_REQUIRED"' in out
    assert re.search(r"^\s+99 200$", out, re.M)
    assert "HTTP/1.1 429 Too Many Requests" in out
    assert "retry-after:" in out.lower()
    # Nothing was refused that the walkthrough does not mean to show.
    assert "EMAIL_TAKEN" not in out
    assert "SKU_TAKEN" not in out
    return emails[0]


def test_the_readme_walkthrough_works_as_printed_twice_in_a_row(embedded):
    script = walkthrough()
    assert "GW=http://127.0.0.1:8000\n" in script
    assert "HOOK_PORT=9000\n" in script
    script = script.replace("GW=http://127.0.0.1:8000\n", f"GW={embedded.url()}\n", 1)
    script = script.replace("HOOK_PORT=9000\n", f"HOOK_PORT={free_port()}\n", 1)
    first = check_walkthrough_output(run_walkthrough(script))
    # Pasted again into the same stack, it makes its own tenants and shows the same things.
    second = check_walkthrough_output(run_walkthrough(script))
    assert first != second


def test_the_readme_sends_readers_nowhere_outside_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert "DESIGN" not in readme
    assert "STYLE.md" not in readme
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):
        if target.startswith(("#", "http://", "https://")):
            continue
        path = (ROOT / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), target
        assert path.exists(), target


SERVER, CLIENT = 2, 3  # span kinds as OTLP numbers them
# What the receiver must never see: trace context and baggage of ours, or our internal headers.
INTERNAL_HEADERS = ("traceparent", "tracestate", "baggage", "x-portico-identity", "x-request-id")


async def test_a_delivery_attempt_continues_the_trace_of_the_order_that_caused_it(embedded, otlp):
    """The orders service keeps the trace context of the request that wrote each outbox event, its
    feed serves it, the relay stores it with the event, and the worker starts each attempt's span as
    a child of it: the gateway's POST /v1/orders span and the attempt's span share one trace. The
    request to the receiver carries none of it."""
    trace_id = os.urandom(16).hex()
    async with httpx.AsyncClient(base_url=embedded.url(), timeout=30) as gateway, Receiver() as receiver:
        shop = await Shop.open(gateway)
        endpoint = await shop.caller.request(
            "POST", "/v1/webhooks/endpoints", json={"url": receiver.url, "events": ["order.created"]}
        )
        assert endpoint.status_code == 201, endpoint.text
        placed = await gateway.post(
            "/v1/orders",
            json={"items": [{"product_id": shop.product_id, "quantity": 1}]},
            headers={**shop.caller.headers, "traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"},
        )
        assert placed.status_code == 201, placed.text
        await receiver.wait_for(1, timeout=90)
    [request] = receiver.received
    assert request.json()["data"]["id"] == placed.json()["id"]
    assert not [name for name in INTERNAL_HEADERS if name in request.headers], request.headers

    def attempts() -> list[ReceivedSpan]:
        return [s for s in otlp.trace(trace_id) if s.service == "webhooks-worker" and s.name == "webhook attempt"]

    async def exported() -> bool:
        # Each process exports in batches of its own: wait for every span asserted on below, not
        # just the first batch to arrive.
        spans = otlp.trace(trace_id)
        return (
            bool(attempts())
            and any(s.service == "gateway" and s.kind == SERVER for s in spans)
            and any(s.service == "gateway" and s.kind == CLIENT for s in spans)
            and any(s.service == "orders" and s.kind == SERVER for s in spans)
        )

    await eventually(exported, timeout=60)
    spans = otlp.trace(trace_id)
    [attempt] = attempts()
    assert attempt.kind == CLIENT
    assert attempt.attributes["webhook.endpoint_id"] == endpoint.json()["id"]
    assert attempt.attributes["webhook.event_type"] == "order.created"
    # The same trace as the gateway's span of the order...
    assert [s.name for s in spans if s.service == "gateway" and s.kind == SERVER] == ["POST /v1/orders"]
    # The gateway's call to the orders service is the parent of the orders service's span.
    gateway_clients = {s.span_id for s in spans if s.service == "gateway" and s.kind == CLIENT}
    # ...and a child of the orders service's span that wrote the event.
    orders_server = {s.span_id: s for s in spans if s.service == "orders" and s.kind == SERVER}
    assert attempt.parent_span_id in orders_server, (attempt, spans)
    assert orders_server[attempt.parent_span_id].parent_span_id in gateway_clients, spans
