"""Whether a webhook URL may be called.

A webhook makes this service send requests wherever a tenant says, so a URL that reaches into our own
network (loopback, private ranges, link-local, cloud metadata) would let any tenant probe or attack it
(SSRF). The registry checks every URL it stores; the delivery worker calls `check_url` again before
every attempt, because what a name resolves to can change after it was registered, and connects to
one of the addresses that were checked rather than resolving a second time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses it resolves to.
Resolver = Callable[[str, int], Awaitable[list[str]]]

AddressClass = Literal["metadata", "unspecified", "multicast", "loopback", "link-local", "private", "reserved"]

# Instance metadata services hand out cloud credentials: never reachable, whatever the settings say.
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog"})
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "169.254.170.2",  # AWS ECS task credentials
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # carrier-grade NAT, often a cloud's internal range
        "fc00::/7",  # unique local
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# What `allow_private_urls` opens, for receivers on the same machine or in a compose network.
DEMO_CLASSES: frozenset[AddressClass] = frozenset({"loopback", "private"})

DEFAULT_PORTS = {"http": 80, "https": 443}
_HOSTNAME_RE = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
# Legacy spellings of an IPv4 address (2130706433, 0x7f.1, 127.1): resolvers turn them into
# addresses without asking DNS, so they are judged here as the address they stand for.
_LEGACY_IPV4_RE = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$")
_FORBIDDEN_CHARS_RE = re.compile(r"[\x00-\x20\x7f\\]")


class UnsafeUrl(ValueError):
    """The URL may not be called. `kind` says why, for machines; the message says it for people."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class DnsUnavailable(RuntimeError):
    """The host could not be resolved right now (a timeout or a temporary resolver failure)."""


@dataclass(frozen=True, slots=True)
class CheckedUrl:
    url: str
    scheme: str
    host: str
    port: int
    # Every address the host resolved to, all of them allowed; connect to one of these.
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True, slots=True)
class _Parsed:
    scheme: str
    host: str
    port: int
    literal: IPAddress | None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), which decides where it goes."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def classify(address: IPAddress) -> AddressClass | None:
    """Why `address` is not a public internet address, or None when it is one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return "link-local"
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return classify(embedded)
    if address in METADATA_ADDRESSES:
        return "metadata"
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if any(address in network for network in PRIVATE_NETWORKS):
        return "private"
    if not address.is_global:
        # Broadcast, documentation, benchmarking, reserved and the like: nothing a receiver lives on.
        return "reserved"
    return None


def _parse(url: str) -> _Parsed:
    if _FORBIDDEN_CHARS_RE.search(url):
        raise UnsafeUrl("syntax", "The URL contains whitespace, control characters or backslashes.")
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeUrl("syntax", "The URL is not valid.") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UnsafeUrl("scheme", "The URL must use http or https.")
    if "@" in parts.netloc:
        raise UnsafeUrl("credentials", "The URL must not carry credentials (user:password@host).")
    if parts.fragment or url.endswith("#"):
        raise UnsafeUrl("syntax", "The URL must not have a fragment: it is never sent to the receiver.")
    host = parts.hostname or ""
    if not host:
        raise UnsafeUrl("syntax", "The URL has no host.")
    if port == 0:
        raise UnsafeUrl("syntax", "The URL's port must be between 1 and 65535.")
    port = port or DEFAULT_PORTS[scheme]
    if ":" in host:
        # Only a bracketed IPv6 literal puts a colon in the host.
        try:
            return _Parsed(scheme, host, port, ipaddress.IPv6Address(host.replace("%25", "%")))
        except ValueError:
            raise UnsafeUrl("syntax", "The URL's IPv6 address is not valid.") from None
    try:
        return _Parsed(scheme, host, port, ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        ascii_host = host.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise UnsafeUrl("syntax", "The URL's host name is not valid.") from None
    if not _HOSTNAME_RE.match(ascii_host):
        raise UnsafeUrl("syntax", "The URL's host name is not valid.")
    if _LEGACY_IPV4_RE.match(ascii_host):
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(ascii_host))
        except OSError:
            raise UnsafeUrl("syntax", "The URL's host is neither an address nor a name.") from None
        kind = classify(address)
        if kind is not None:
            raise _refuse(address, kind, ascii_host)
        # HTTP clients refuse these spellings; a receiver's address is written in dotted decimal.
        raise UnsafeUrl("syntax", f"Write the address {address} in dotted decimal.")
    return _Parsed(scheme, ascii_host, port, None)


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolves through the event loop (the resolver runs in the loop's executor, never blocking it)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


_NO_SUCH_HOST = frozenset(
    code
    for code in (
        socket.EAI_NONAME,
        getattr(socket, "EAI_NODATA", None),
        getattr(socket, "EAI_ADDRFAMILY", None),
    )
    if code is not None
)


async def _resolve(parsed: _Parsed, resolver: Resolver, dns_timeout: float) -> tuple[IPAddress, ...]:
    try:
        async with asyncio.timeout(dns_timeout):
            raw = await resolver(parsed.host, parsed.port)
    except socket.gaierror as exc:
        if exc.errno in _NO_SUCH_HOST:
            raise UnsafeUrl("unresolvable", f"The host {parsed.host} does not resolve.") from None
        raise DnsUnavailable(f"The host {parsed.host} could not be resolved: {exc.strerror}.") from exc
    except TimeoutError:
        raise DnsUnavailable(f"Resolving the host {parsed.host} took longer than {dns_timeout:g}s.") from None
    addresses = []
    for text in raw:
        # A link-local result may carry its zone ("fe80::1%eth0"); the zone does not change the class.
        addresses.append(ipaddress.ip_address(text.split("%", 1)[0]))
    if not addresses:
        raise UnsafeUrl("unresolvable", f"The host {parsed.host} does not resolve.")
    return tuple(dict.fromkeys(addresses))


def _refuse(address: IPAddress, kind: AddressClass, host: str | None) -> UnsafeUrl:
    article = "an" if kind[0] in "aeiou" else "a"
    where = f"The host {host} resolves to {address}, " if host else f"{address} is "
    return UnsafeUrl(kind, f"{where}{article} {kind} address; webhooks only go to public internet addresses.")


async def check_url(
    url: str,
    *,
    allow_private: bool = False,
    dns_timeout: float = 2.0,
    resolver: Resolver = system_resolver,
) -> CheckedUrl:
    """Checks `url` and every address its host resolves to; raises UnsafeUrl or DnsUnavailable.

    `allow_private` opens loopback and private networks (local demos); metadata, link-local,
    multicast, unspecified and reserved addresses are refused regardless.
    """
    parsed = _parse(url)
    if parsed.host in METADATA_HOSTS:
        raise UnsafeUrl("metadata", f"The host {parsed.host} is a cloud metadata service.")
    if parsed.literal is not None:
        addresses: tuple[IPAddress, ...] = (parsed.literal,)
        named = None
    elif parsed.host == "localhost" or parsed.host.endswith(".localhost"):
        # Loopback by definition (RFC 6761), whatever a resolver would answer.
        addresses = (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))
        named = parsed.host
    else:
        addresses = await _resolve(parsed, resolver, dns_timeout)
        named = parsed.host
    for address in addresses:
        kind = classify(address)
        if kind is not None and not (allow_private and kind in DEMO_CLASSES):
            raise _refuse(address, kind, named)
    return CheckedUrl(url=url, scheme=parsed.scheme, host=parsed.host, port=parsed.port, addresses=addresses)
