"""Answers that hold a secret are never kept by a cache: the gateway marks every route whose row
says `secret` `no-store`, whatever the service behind it said, and the rows say it of every route
that hands out a secret."""

from __future__ import annotations

import pytest

from gateway.app import FORWARD_ROUTERS
from gateway.edge.caching import cache_headers
from gateway.routes.forward import compiled_routes

# Every route that hands out a token, a key or a signing secret.
SECRETS = {
    ("POST", "/v1/auth/token"),
    ("POST", "/v1/api-keys"),
    ("POST", "/v1/api-keys/{key_id}/rotate"),
    ("POST", "/v1/webhooks/endpoints"),
    ("POST", "/v1/webhooks/endpoints/{endpoint_id}/rotate-secret"),
}


def test_the_routes_that_hand_out_secrets_say_so_and_no_other_does():
    secret = {(route.method, route.path) for route in compiled_routes(FORWARD_ROUTERS) if route.secret}
    assert secret == SECRETS


@pytest.mark.parametrize("service_said", [[], [(b"cache-control", b"max-age=600")]])
def test_a_secret_answer_is_no_store_whatever_the_service_said(service_said):
    raw = [(b"content-type", b"application/json"), *service_said]
    cache_headers(raw, secret=True, tenant=True)
    assert [value for name, value in raw if name == b"cache-control"] == [b"no-store"]


def test_other_tenant_answers_stay_private_and_vary_by_credentials():
    raw = [(b"content-type", b"application/json"), (b"vary", b"Accept")]
    cache_headers(raw, secret=False, tenant=True)
    assert dict(raw)[b"cache-control"] == b"private, no-cache"
    assert dict(raw)[b"vary"] == b"Accept, Authorization, X-API-Key"


def test_an_anonymous_answer_is_left_as_the_service_sent_it():
    raw = [(b"content-type", b"application/json")]
    cache_headers(raw, secret=False, tenant=False)
    assert raw == [(b"content-type", b"application/json")]
