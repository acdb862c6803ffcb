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


# What `allow_private_urls` opens, for receivers on the same machine or in a compose network.
DEMO_CLASSES: frozenset[AddressClass] = frozenset({"loopback", "private"})


@dataclass(frozen=True, slots=True)
class Block:
    """One entry of the IANA special-purpose address registries (or of the address space around them)."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    kind: AddressClass
    name: str


def _blocks(*rows: tuple[str, AddressClass, str]) -> tuple[Block, ...]:
    blocks = [Block(ipaddress.ip_network(network), kind, name) for network, kind, name in rows]
    # The most specific block that holds an address describes it.
    return tuple(sorted(blocks, key=lambda block: -block.network.prefixlen))


# The IANA IPv4 Special-Purpose Address Registry, and multicast. Every block is refused, also the few
# the registry calls globally reachable (AS112, AMT, the PCP and TURN anycast addresses): each is a
# protocol's service address, never where a webhook receiver lives.
IPV4_BLOCKS = _blocks(
    ("0.0.0.0/32", "unspecified", "this host, RFC 1122"),
    ("0.0.0.0/8", "reserved", '"this network", RFC 791'),
    ("10.0.0.0/8", "private", "private use, RFC 1918"),
    ("100.64.0.0/10", "private", "shared address space (carrier-grade NAT, often a cloud's own), RFC 6598"),
    ("127.0.0.0/8", "loopback", "loopback, RFC 1122"),
    ("169.254.0.0/16", "link-local", "link local, RFC 3927"),
    ("172.16.0.0/12", "private", "private use, RFC 1918"),
    ("192.0.0.0/24", "reserved", "IETF protocol assignments, RFC 6890"),
    ("192.0.2.0/24", "reserved", "documentation (TEST-NET-1), RFC 5737"),
    ("192.31.196.0/24", "reserved", "AS112-v4, RFC 7535"),
    ("192.52.193.0/24", "reserved", "AMT, RFC 7450"),
    ("192.88.99.0/24", "reserved", "deprecated 6to4 relay anycast, RFC 7526"),
    ("192.168.0.0/16", "private", "private use, RFC 1918"),
    ("192.175.48.0/24", "reserved", "AS112 direct delegation, RFC 7534"),
    ("198.18.0.0/15", "reserved", "benchmarking, RFC 2544"),
    ("198.51.100.0/24", "reserved", "documentation (TEST-NET-2), RFC 5737"),
    ("203.0.113.0/24", "reserved", "documentation (TEST-NET-3), RFC 5737"),
    ("224.0.0.0/4", "multicast", "multicast, RFC 5771"),
    ("240.0.0.0/4", "reserved", "reserved, RFC 1112"),
    ("255.255.255.255/32", "reserved", "limited broadcast, RFC 919"),
)
# The IANA IPv6 Special-Purpose Address Registry, and the address space outside global unicast
# (2000::/3), which is unassigned or reserved apart from the blocks named here. The forms that carry
# an IPv4 address (::ffff:0:0/96 and the others below) are judged with that address first.
IPV6_BLOCKS = _blocks(
    ("::/128", "unspecified", "unspecified, RFC 4291"),
    ("::1/128", "loopback", "loopback, RFC 4291"),
    ("::/8", "reserved", "reserved by the IETF, RFC 4291"),
    ("64:ff9b:1::/48", "reserved", "local-use IPv4/IPv6 translation, RFC 8215"),
    ("100::/64", "reserved", "discard-only, RFC 6666"),
    ("2001::/23", "reserved", "IETF protocol assignments, RFC 2928"),
    ("2001::/32", "reserved", "Teredo, RFC 4380"),
    ("2001:2::/48", "reserved", "benchmarking, RFC 5180"),
    ("2001:3::/32", "reserved", "AMT, RFC 7450"),
    ("2001:4:112::/48", "reserved", "AS112-v6, RFC 7535"),
    ("2001:10::/28", "reserved", "deprecated ORCHID, RFC 4843"),
    ("2001:20::/28", "reserved", "ORCHIDv2, RFC 7343"),
    ("2001:30::/28", "reserved", "drone remote ID entity tags, RFC 9374"),
    ("2001:db8::/32", "reserved", "documentation, RFC 3849"),
    ("2002::/16", "reserved", "6to4, RFC 3056 (deprecated relays, RFC 7526)"),
    ("2620:4f:8000::/48", "reserved", "AS112 direct delegation, RFC 7534"),
    ("3fff::/20", "reserved", "documentation, RFC 9637"),
    ("5f00::/16", "reserved", "segment routing (SRv6) SIDs, RFC 9602"),
    ("fc00::/7", "private", "unique local, RFC 4193"),
    ("fe80::/10", "link-local", "link-local unicast, RFC 4291"),
    ("ff00::/8", "multicast", "multicast, RFC 4291"),
)
GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
OUTSIDE_GLOBAL_UNICAST = Block(ipaddress.IPv6Network("::/0"), "reserved", "outside global unicast (2000::/3), RFC 4291")
IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an address is not a public internet address."""

    kind: AddressClass
    # What the address is, for the message: the registry block, or the form and what it carries.
    what: str
    # Whether `allow_private_urls` opens it: only for loopback and private addresses as they are,
    # never for a tunnel or translation that would carry a request to someone's such address.
    demo: bool = False


def _block_of(address: IPAddress) -> Block | None:
    if isinstance(address, ipaddress.IPv4Address):
        return next((block for block in IPV4_BLOCKS if address in block.network), None)
    found = next((block for block in IPV6_BLOCKS if address in block.network), None)
    if found is None and address not in GLOBAL_UNICAST:
        return OUTSIDE_GLOBAL_UNICAST
    return found


def _carried_ipv4(address: ipaddress.IPv6Address) -> tuple[str, list[ipaddress.IPv4Address]] | None:
    """The IPv4 addresses an IPv6 address carries, with the name of its form; None for other addresses."""
    low = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in IPV4_MAPPED:
        return "IPv4-mapped", [low]
    if address in NAT64:
        return "NAT64", [low]
    if address in IPV4_TRANSLATED:
        return "IPv4-translated", [low]
    if address in IPV4_COMPATIBLE and int(address) > 1:
        return "IPv4-compatible", [low]
    if address.sixtofour is not None:
        return "6to4", [address.sixtofour]
    # Teredo (2001::/32) carries a relay's and a NAT's addresses, not the destination's: its block decides.
    return None


def classify(address: IPAddress) -> Refusal | None:
    """Why `address` is not a public internet address, or None when it is one.

    Decided by the IANA special-purpose registries rather than `ipaddress`'s `is_global`, which on
    Python 3.11 calls IPv4-compatible and IPv4-translated spellings of loopback (`::127.0.0.1`,
    `::ffff:0:7f00:1`) global, among others.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        # A zone names an interface of this machine: never a way to a receiver, whatever the address.
        unzoned = classify(ipaddress.IPv6Address(int(address)))
        kind: AddressClass = unzoned.kind if unzoned is not None else "link-local"
        return Refusal(kind, f"{unzoned.what if unzoned else 'an address'} with a zone (%{address.scope_id})")
    if address in METADATA_ADDRESSES:
        return Refusal("metadata", "a cloud metadata service")
    if isinstance(address, ipaddress.IPv6Address):
        carried = _carried_ipv4(address)
        if carried is not None:
            form, embedded = carried
            # What it carries first: a request to it may end up there (the kernel for mapped forms,
            # a translator or relay for the others).
            for inner in embedded:
                refusal = classify(inner)
                if refusal is not None:
                    via = f"the {form} form of {inner}, {refusal.what}"
                    return Refusal(refusal.kind, via, demo=refusal.demo and form == "IPv4-mapped")
            if form in ("IPv4-mapped", "NAT64"):
                # The same destination as the public IPv4 address it carries.
                return None
    block = _block_of(address)
    if block is None:
        return None
    return Refusal(block.kind, block.name, demo=block.kind in DEMO_CLASSES)


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
        refusal = classify(address)
        if refusal is not None:
            raise _refuse(address, refusal, ascii_host)
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


def _refuse(address: IPAddress, refusal: Refusal, host: str | None) -> UnsafeUrl:
    kind = refusal.kind
    article = "an" if kind[0] in "aeiou" else "a"
    where = f"The host {host} resolves to {address}, " if host else f"{address} is "
    return UnsafeUrl(
        kind,
        f"{where}{article} {kind} address ({refusal.what}); webhooks only go to public internet addresses.",
    )


async def check_url(
    url: str,
    *,
    allow_private: bool = False,
    dns_timeout: float = 2.0,
    resolver: Resolver = system_resolver,
) -> CheckedUrl:
    """Checks `url` and every address its host resolves to; raises UnsafeUrl or DnsUnavailable.

    `allow_private` opens loopback and private addresses as they are (local demos); metadata, link-local,
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
        refusal = classify(address)
        if refusal is not None and not (allow_private and refusal.demo):
            raise _refuse(address, refusal, named)
    return CheckedUrl(url=url, scheme=parsed.scheme, host=parsed.host, port=parsed.port, addresses=addresses)
