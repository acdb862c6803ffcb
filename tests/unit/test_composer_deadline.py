"""Out of time, an aggregate names the late service: a part or check waiting for another part's
answer when its own timer fires blames that part's service, not its own, which answered."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from opentelemetry.trace import NoOpTracer

from gateway.composer import Call, Composer, Part
from gateway.upstreams import Upstreams
from shared.calls import CallPolicy
from shared.contract import Identity
from shared.errors import UpstreamTimeout
from shared.http import ServiceClient
from shared.identity_token import IdentitySigner
from shared.settings import ProcessSettings

CALLER = Identity(subject="u-1", tenant_id="t-1")


async def never(call: Call) -> Any:
    await asyncio.Event().wait()


async def total_of_slow(call: Call) -> Any:
    # Its own service answered at once; then it needs the slow part's answer.
    return await call.value_of("slow")


# The waiting part's own timer fires first, well before the budget the slow part has.
PARTS = (Part("waiting", "orders", total_of_slow, timeout=0.05), Part("slow", "inventory", never))


def composer() -> Composer:
    http = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(200)))
    policy = CallPolicy(ProcessSettings())
    clients = {
        name: ServiceClient(name, f"http://{name}.invalid", http, IdentitySigner("s" * 48, 60), policy)
        for name in ("orders", "inventory")
    }
    return Composer(Upstreams(clients), NoOpTracer(), budget=0.5)


async def test_a_check_out_of_time_waiting_for_another_names_the_late_service():
    with pytest.raises(UpstreamTimeout) as raised:
        await composer().all_or_nothing(PARTS, CALLER, {})
    assert raised.value.service == "inventory"
    assert raised.value.detail == "The inventory service did not answer in time."


async def test_a_part_out_of_time_waiting_for_another_names_the_late_service():
    outcomes = await composer().gather(PARTS, CALLER, {})
    waiting = outcomes["waiting"]
    assert (waiting.status, waiting.error_code) == ("timeout", "DOWNSTREAM_TIMEOUT")
    assert waiting.detail == "The inventory service did not answer in time."
    assert outcomes["slow"].status == "timeout"
