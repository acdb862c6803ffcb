"""The client's address behind trusted proxies, when X-Forwarded-For is malformed: never an error,
never an address the client made up."""

from __future__ import annotations

import pytest

from gateway.edge.addresses import ClientAddress

PROXY = "10.0.0.5"


def scope(peer: str, *forwarded: bytes) -> dict:
    return {"type": "http", "client": (peer, 5000), "headers": [(b"x-forwarded-for", value) for value in forwarded]}


address = ClientAddress(["10.0.0.0/24"])


@pytest.mark.parametrize(
    "forwarded",
    [
        b"not-an-address",
        b"198.51.100.7:8080",  # a port is not part of the field
        b"[2001:db8::1]",
        b"198.51.100.300",
        b"unknown",
        b"198.51.100.7; drop table",
        b"\xff\xfe",
        b"1" * 10_000,
    ],
)
def test_a_malformed_last_entry_makes_the_proxy_the_client(forwarded):
    assert address(scope(PROXY, forwarded)) == PROXY


@pytest.mark.parametrize("forwarded", [b"", b" , ,", b","])
def test_an_empty_header_makes_the_proxy_the_client(forwarded):
    assert address(scope(PROXY, forwarded)) == PROXY


def test_entries_left_of_a_malformed_one_are_not_believed():
    assert address(scope(PROXY, b"198.51.100.7, garbage")) == PROXY


def test_well_formed_entries_are_read_from_the_right_skipping_trusted_proxies():
    assert address(scope(PROXY, b"203.0.113.1, 198.51.100.7, 10.0.0.9")) == "198.51.100.7"
    # Several header lines are one list, in order.
    assert address(scope(PROXY, b"203.0.113.1", b"198.51.100.7")) == "198.51.100.7"
    # Written in a non-canonical form, the address is normalised.
    assert address(scope(PROXY, b"2001:DB8:0:0::1")) == "2001:db8::1"


def test_an_untrusted_peer_is_the_client_whatever_it_forwards():
    assert address(scope("198.51.100.9", b"203.0.113.1")) == "198.51.100.9"
    assert address(scope("198.51.100.9", b"garbage")) == "198.51.100.9"
    assert ClientAddress([])(scope(PROXY, b"203.0.113.1")) == PROXY


def test_a_connection_without_a_peer_is_unknown():
    assert address({"type": "http", "client": None, "headers": []}) == "unknown"
