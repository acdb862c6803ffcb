"""Sets of networks that a peer address is checked against (trusted proxies, who may read /metrics)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Loopback and the private ranges: where a scraper on the same host, a compose network or a pod
# network connects from. 100.64.0.0/10 (shared address space) is where some clouds put pod networks;
# no client on the internet arrives from it.
PRIVATE_NETWORKS: tuple[str, ...] = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
)


class Networks:
    """Addresses or CIDRs; `address in networks` for an address as text. An IPv4 address written as
    IPv6 (`::ffff:10.0.0.1`, what a dual-stack socket reports) is judged as the IPv4 address."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)
