"""The calls the gateway makes for a request carry its X-Request-ID to the service, the orders feed's
reads included (a resume's check and backlog), and the relay's own polls, outside any request, none."""

from __future__ import annotations

import httpx

from gateway.realtime.relay import OrdersFeed
from shared.calls import CallPolicy
from shared.http import ServiceClient
from shared.identity_token import IdentitySigner
from shared.request_id import request_id_var
from shared.settings import ProcessSettings


async def test_a_feed_read_carries_the_id_of_the_request_it_is_made_for():
    sent: list[str | None] = []

    def orders(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("x-request-id"))
        return httpx.Response(200, json={"items": [], "next_after": 0})

    http = httpx.AsyncClient(transport=httpx.MockTransport(orders))
    client = ServiceClient(
        "orders", "http://orders.invalid", http, IdentitySigner("s" * 48, 60), CallPolicy(ProcessSettings())
    )
    feed = OrdersFeed(client)
    # The relay's poll (no request), then a resume's check (a request's).
    for request_id in (None, "resume-1"):
        token = request_id_var.set(request_id)
        try:
            await feed.page(0, 1)
        finally:
            request_id_var.reset(token)
    assert sent == [None, "resume-1"]
