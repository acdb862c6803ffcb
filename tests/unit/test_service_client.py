"""The shared service client's retry rule: once, only within the call's time, only safe calls: a GET
that got no answer short of a timeout, a keyed write only when its connection could not be made. The
network is httpx's mock transport here, so each attempt is counted exactly; the real sockets are in
tests/e2e/test_resilience.py."""

from __future__ import annotations

import aiohttp
import httpx
import pytest

from shared.calls import CallPolicy
from shared.contract import Identity
from shared.errors import UpstreamTimeout, UpstreamUnavailable
from shared.failures import no_answer
from shared.http import ServiceClient
from shared.identity_token import IdentitySigner
from shared.settings import ProcessSettings

CALLER = Identity(subject="u-1", tenant_id="t-1")


class Network:
    """Fails the first `failures` attempts with `error`, then answers 200."""

    def __init__(self, failures: int, error: type[httpx.TransportError] = httpx.ConnectError) -> None:
        self.failures = failures
        self.error = error
        self.attempts = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise self.error("failed", request=request)
        return httpx.Response(200, json={"ok": True})


def client_on(network: Network, **settings: object) -> ServiceClient:
    policy = CallPolicy(ProcessSettings(**{"http_retry_jitter_seconds": 0.0, **settings}))
    http = httpx.AsyncClient(transport=httpx.MockTransport(network))
    return ServiceClient("users", "http://users.invalid", http, IdentitySigner("s" * 48, 60), policy)


async def test_a_get_is_retried_once_on_a_connect_error():
    network = Network(failures=1)
    response = await client_on(network).send("GET", "/users/me", identity=CALLER)
    assert response.status_code == 200
    assert network.attempts == 2


async def test_only_once():
    network = Network(failures=2)
    with pytest.raises(UpstreamUnavailable):
        await client_on(network).send("GET", "/users/me", identity=CALLER)
    assert network.attempts == 2


async def test_a_write_is_never_retried_without_an_idempotency_key():
    network = Network(failures=1)
    with pytest.raises(UpstreamUnavailable):
        await client_on(network).send("POST", "/orders", identity=CALLER, json={})
    assert network.attempts == 1


async def test_a_keyed_write_is_retried():
    network = Network(failures=1)
    response = await client_on(network).send(
        "POST", "/orders", identity=CALLER, json={}, headers={"Idempotency-Key": "k-1"}
    )
    assert response.status_code == 200
    assert network.attempts == 2


@pytest.mark.parametrize("error", [httpx.ReadError, httpx.RemoteProtocolError])
async def test_a_get_whose_answer_was_lost_is_retried(error):
    # The service got it and its answer was lost (an instance killed mid-answer): a GET changes nothing.
    network = Network(failures=1, error=error)
    response = await client_on(network).send("GET", "/users/me", identity=CALLER)
    assert response.status_code == 200
    assert network.attempts == 2


async def test_a_keyed_write_the_service_may_have_got_is_not_retried():
    network = Network(failures=1, error=httpx.ReadError)
    with pytest.raises(UpstreamUnavailable):
        await client_on(network).send("POST", "/orders", identity=CALLER, json={}, headers={"Idempotency-Key": "k-1"})
    assert network.attempts == 1


async def test_a_request_that_may_have_arrived_is_not_retried():
    network = Network(failures=1, error=httpx.ReadTimeout)
    with pytest.raises(UpstreamTimeout):
        await client_on(network).send("GET", "/users/me", identity=CALLER)
    assert network.attempts == 1


async def test_no_retry_past_the_calls_time():
    network = Network(failures=1)
    with pytest.raises(UpstreamUnavailable):
        await client_on(network, http_retry_jitter_seconds=1.0).send(
            "GET", "/users/me", identity=CALLER, timeout=0.000001
        )
    assert network.attempts == 1


async def test_no_retries_when_switched_off():
    network = Network(failures=1)
    with pytest.raises(UpstreamUnavailable):
        await client_on(network, http_connect_retries=0).send("GET", "/users/me", identity=CALLER)
    assert network.attempts == 1


@pytest.mark.parametrize(
    ("error", "timed_out", "never_got_it"),
    [
        (aiohttp.ServerDisconnectedError(), False, True),
        # A pooled connection the service closed (a killed instance) as the request was written.
        (aiohttp.ClientConnectionResetError("Cannot write to closing transport"), False, True),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), False, True),
        (aiohttp.ServerTimeoutError("read timeout"), True, False),
        # The answer began: the service got the request.
        (aiohttp.ClientPayloadError("Response payload is not completed"), False, False),
    ],
)
def test_what_an_aiohttp_failure_says_of_the_request(error, timed_out, never_got_it):
    assert no_answer(error) == (timed_out, never_got_it)
