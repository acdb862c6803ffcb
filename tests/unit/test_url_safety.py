"""Which addresses a webhook may go to, decided by the IANA IPv4 and IPv6 special-purpose address
registries, for every spelling of an address a URL can carry.

The check this replaced trusted `ipaddress`'s `is_global` (Python 3.11) for whatever it did not name
itself, and let these through, each marked `# was allowed` below:

- `[::127.0.0.1]` (IPv4-compatible) and `[::ffff:0:7f00:1]`, `[::ffff:0:127.0.0.1]` (IPv4-translated):
  spellings of loopback that Python calls global;
- `[::8.8.8.8]`, `[::ffff:0:8.8.8.8]`: the same deprecated forms around a public address;
- `[64:ff9b:1::a00:1]` (local-use NAT64), `[2002:808:808::1]` (6to4), `[3fff::1]` (documentation),
  `[5f00::1]` (SRv6), `[2620:4f:8000::1]` (AS112), `[fec0::1]` (outside global unicast);
- `192.0.0.8`, `192.0.0.9` (IETF protocol assignments), `192.31.196.1`, `192.175.48.1` (AS112),
  `192.52.193.1` (AMT), `192.88.99.1` (deprecated 6to4 relay anycast).

With `allow_private_urls` it also let through `[::127.0.0.1]`, `[::ffff:0:7f00:1]`, `[64:ff9b::a00:1]`
and `[2002:7f00:1::]` (the `DEMO` table): forms that do not reach this machine's loopback or private
network as they are, but someone's through a translator or relay.

Registration and delivery run this same check (`check_url`): the registration table in
tests/integration/test_webhooks.py and the delivery test in tests/integration/test_webhook_delivery.py
take spellings from here through the API and the worker.
"""

from __future__ import annotations

import socket

import pytest

from services.webhooks.url_safety import UnsafeUrl, check_url

ALLOWED = "allowed"
REFUSED = "refused"

# (host as written in the URL, verdict, kind of refusal)
SPELLINGS: list[tuple[str, str, str | None]] = [
    # IPv4, dotted decimal
    ("93.184.215.14", ALLOWED, None),
    ("1.1.1.1", ALLOWED, None),
    ("127.0.0.1", REFUSED, "loopback"),
    ("127.255.255.254", REFUSED, "loopback"),
    ("10.0.0.1", REFUSED, "private"),
    ("172.31.255.255", REFUSED, "private"),
    ("192.168.0.1", REFUSED, "private"),
    ("100.64.0.1", REFUSED, "private"),  # shared address space (carrier-grade NAT)
    ("169.254.10.10", REFUSED, "link-local"),
    ("169.254.169.254", REFUSED, "metadata"),
    ("100.100.100.200", REFUSED, "metadata"),
    ("0.0.0.0", REFUSED, "unspecified"),
    ("0.1.2.3", REFUSED, "reserved"),  # "this network"
    ("192.0.0.8", REFUSED, "reserved"),  # IPv4 dummy address; was allowed
    ("192.0.0.9", REFUSED, "reserved"),  # PCP anycast; was allowed
    ("192.0.2.1", REFUSED, "reserved"),  # documentation
    ("198.51.100.7", REFUSED, "reserved"),  # documentation
    ("203.0.113.7", REFUSED, "reserved"),  # documentation
    ("198.18.0.1", REFUSED, "reserved"),  # benchmarking
    ("192.31.196.1", REFUSED, "reserved"),  # AS112-v4; was allowed
    ("192.175.48.1", REFUSED, "reserved"),  # AS112 direct delegation; was allowed
    ("192.52.193.1", REFUSED, "reserved"),  # AMT; was allowed
    ("192.88.99.1", REFUSED, "reserved"),  # deprecated 6to4 relay anycast; was allowed
    ("224.0.0.251", REFUSED, "multicast"),
    ("240.0.0.1", REFUSED, "reserved"),
    ("255.255.255.255", REFUSED, "reserved"),  # limited broadcast
    # IPv4, other spellings: judged as the address they stand for, without DNS
    ("2130706433", REFUSED, "loopback"),  # decimal
    ("0x7f000001", REFUSED, "loopback"),  # hexadecimal
    ("0x7f.1", REFUSED, "loopback"),
    ("0177.0.0.1", REFUSED, "loopback"),  # octal
    ("017700000001", REFUSED, "loopback"),
    ("127.1", REFUSED, "loopback"),
    ("0xa.0.0.1", REFUSED, "private"),
    ("3232235777", REFUSED, "private"),  # 192.168.1.1
    ("0xa9.0xfe.0xa9.0xfe", REFUSED, "metadata"),
    ("1572395042", REFUSED, "syntax"),  # 93.184.215.34, public: write it in dotted decimal
    ("08.8.8.8", REFUSED, "syntax"),  # not octal, not an address
    # IPv6, native
    ("[2606:4700:4700::1111]", ALLOWED, None),
    ("[2001:4860:4860::8888]", ALLOWED, None),
    ("[::1]", REFUSED, "loopback"),
    ("[0:0:0:0:0:0:0:1]", REFUSED, "loopback"),
    ("[::]", REFUSED, "unspecified"),
    ("[fd12:3456::1]", REFUSED, "private"),
    ("[fd00:ec2::254]", REFUSED, "metadata"),
    ("[fe80::1]", REFUSED, "link-local"),
    ("[ff02::1]", REFUSED, "multicast"),
    ("[fec0::1]", REFUSED, "reserved"),  # deprecated site-local, outside global unicast; was allowed
    ("[100::1]", REFUSED, "reserved"),  # discard-only
    ("[2001:db8::1]", REFUSED, "reserved"),  # documentation
    ("[3fff::1]", REFUSED, "reserved"),  # documentation (RFC 9637); was allowed
    ("[2001:2::1]", REFUSED, "reserved"),  # benchmarking
    ("[2001:20::1]", REFUSED, "reserved"),  # ORCHIDv2
    ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]", REFUSED, "reserved"),  # Teredo
    ("[5f00::1]", REFUSED, "reserved"),  # SRv6 SIDs; was allowed
    ("[2620:4f:8000::1]", REFUSED, "reserved"),  # AS112 direct delegation; was allowed
    # IPv6 with a zone id: it names an interface of this machine
    ("[fe80::1%25eth0]", REFUSED, "link-local"),
    ("[::1%25lo]", REFUSED, "loopback"),
    ("[2606:4700:4700::1111%25eth0]", REFUSED, "link-local"),
    # IPv6 forms that carry an IPv4 address: judged by that address first
    ("[::ffff:127.0.0.1]", REFUSED, "loopback"),  # IPv4-mapped
    ("[::ffff:7f00:1]", REFUSED, "loopback"),  # IPv4-mapped, in hex
    ("[::ffff:10.0.0.1]", REFUSED, "private"),
    ("[::ffff:169.254.169.254]", REFUSED, "metadata"),
    ("[::ffff:93.184.215.14]", ALLOWED, None),  # the same destination as 93.184.215.14
    ("[::127.0.0.1]", REFUSED, "loopback"),  # IPv4-compatible; was allowed
    ("[::8.8.8.8]", REFUSED, "reserved"),  # IPv4-compatible, deprecated; was allowed
    ("[::ffff:0:7f00:1]", REFUSED, "loopback"),  # IPv4-translated; was allowed
    ("[::ffff:0:127.0.0.1]", REFUSED, "loopback"),  # IPv4-translated; was allowed
    ("[::ffff:0:8.8.8.8]", REFUSED, "reserved"),  # IPv4-translated, never routed; was allowed
    ("[64:ff9b::127.0.0.1]", REFUSED, "loopback"),  # NAT64 well-known prefix
    ("[64:ff9b::c0a8:101]", REFUSED, "private"),
    ("[64:ff9b::a9fe:a9fe]", REFUSED, "metadata"),
    ("[64:ff9b::93.184.215.14]", ALLOWED, None),  # a translator sends it to 93.184.215.14
    ("[64:ff9b:1::a00:1]", REFUSED, "reserved"),  # local-use NAT64; was allowed
    ("[2002:7f00:1::]", REFUSED, "loopback"),  # 6to4
    ("[2002:a00:1::1]", REFUSED, "private"),
    ("[2002:808:808::1]", REFUSED, "reserved"),  # 6to4 around a public address; was allowed
]

# allow_private_urls opens loopback and private addresses as they are (and IPv4-mapped, which the
# kernel sends to the same address), never forms that a translator or relay would carry elsewhere.
DEMO: list[tuple[str, str, str | None]] = [
    ("127.0.0.1", ALLOWED, None),
    ("10.0.0.1", ALLOWED, None),
    ("[::1]", ALLOWED, None),
    ("[fd12::1]", ALLOWED, None),
    ("[::ffff:127.0.0.1]", ALLOWED, None),
    ("[::127.0.0.1]", REFUSED, "loopback"),
    ("[::ffff:0:7f00:1]", REFUSED, "loopback"),
    ("[64:ff9b::a00:1]", REFUSED, "private"),
    ("[2002:7f00:1::]", REFUSED, "loopback"),
    ("[::1%25lo]", REFUSED, "loopback"),
    ("169.254.169.254", REFUSED, "metadata"),
    ("169.254.1.1", REFUSED, "link-local"),
    ("[2001:db8::1]", REFUSED, "reserved"),
]


async def no_dns(host: str, port: int) -> list[str]:
    raise socket.gaierror(socket.EAI_NONAME, f"{host} is not resolved in this test")


async def verdict(host: str, *, allow_private: bool = False) -> tuple[str, str | None]:
    try:
        await check_url(f"https://{host}/hook", allow_private=allow_private, resolver=no_dns)
    except UnsafeUrl as exc:
        return REFUSED, exc.kind
    return ALLOWED, None


def test_the_table_is_wide():
    assert len(SPELLINGS) >= 40
    assert len({host for host, _, _ in SPELLINGS}) == len(SPELLINGS)


@pytest.mark.parametrize(("host", "expected", "kind"), SPELLINGS)
async def test_each_spelling_is_judged_by_the_registries(host, expected, kind):
    assert await verdict(host) == (expected, kind)


@pytest.mark.parametrize(("host", "expected", "kind"), DEMO)
async def test_allow_private_opens_only_loopback_and_private_as_they_are(host, expected, kind):
    assert await verdict(host, allow_private=True) == (expected, kind)


async def test_a_refusal_names_the_registry_block_or_the_form():
    with pytest.raises(UnsafeUrl) as refused:
        await check_url("https://[::ffff:0:7f00:1]/hook", resolver=no_dns)
    assert "the IPv4-translated form of 127.0.0.1" in refused.value.message
    with pytest.raises(UnsafeUrl) as refused:
        await check_url("https://[2001:20::1]/hook", resolver=no_dns)
    assert "ORCHIDv2, RFC 7343" in refused.value.message


async def test_names_are_judged_by_every_address_they_resolve_to():
    async def resolves(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "::ffff:0:7f00:1"]

    with pytest.raises(UnsafeUrl) as refused:
        await check_url("https://hooks.example.com/hook", resolver=resolves)
    assert refused.value.kind == "loopback"
    assert refused.value.message.startswith("The host hooks.example.com resolves to ::ffff:0:7f00:1")
