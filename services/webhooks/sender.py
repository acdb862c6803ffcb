"""One HTTP attempt at a webhook: checked, pinned, bounded.

Every attempt checks the URL again (`check_url`: what a name resolves to can change after it was
registered) and then connects to one of the addresses that were checked, never resolving a second
time: the connector's resolver only hands out the addresses of the check in progress, so a name
rebound between the check and the connect (DNS rebinding) reaches nothing new. The request still
carries the URL's host name (Host header, TLS SNI and certificate check), as with any other request.

What the receiver answers is read only as far as a few hundred bytes; redirects are never followed
(a redirect is a failed attempt); and the whole attempt, resolution included, has one deadline.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import time
from dataclasses import KW_ONLY, dataclass
from datetime import datetime
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from services.webhooks.url_safety import CheckedUrl, DnsUnavailable, Resolver, UnsafeUrl, check_url, system_resolver
from shared.db import utcnow
from shared.errors import RETRY_AFTER

# Bytes of a receiver's answer kept in the attempt log; the rest is never read.
BODY_EXCERPT_BYTES = 200
# An answer up to this size is read to its end so the connection can be used again; a larger one
# closes the connection instead of being read.
DRAIN_BYTES = 64 * 1024
ERROR_CHARS = 500
USER_AGENT = "Portico-Webhooks/1.0"

_checked: contextvars.ContextVar[CheckedUrl | None] = contextvars.ContextVar("webhook_checked_url", default=None)


class PinnedResolver(AbstractResolver):
    """Answers only with the addresses the running attempt has checked, for the host it checked."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        checked = _checked.get()
        if checked is None or host.rstrip(".").lower() != checked.host:
            raise OSError(f"no checked address for {host}: refusing to resolve it")
        results: list[ResolveResult] = []
        for address in checked.addresses:
            address_family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            if family not in (socket.AF_UNSPEC, address_family):
                continue
            results.append(
                {
                    "hostname": host,
                    "host": str(address),
                    "port": port,
                    "family": address_family,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
            )
        if not results:
            raise OSError(f"no checked address of the family asked for {host}")
        return results

    async def close(self) -> None:
        return None


def host_key(url: str) -> str:
    """The receiver host a URL reaches, as connections are pooled: `host:port`."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return url
    host = (parts.hostname or "").rstrip(".")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def create_session(max_connections: int) -> aiohttp.ClientSession:
    """The worker's one client session: pinned resolution, no DNS cache, no cookies, no proxies.

    No limit per host here: a pool's limit per host is shared by every tenant, so one tenant's slow
    receivers would hold the connections another tenant's receiver on the same host waits for. The
    claim bounds connections per tenant and host instead (`tenant_host_concurrency`), and the
    worker's slots bound the total, so no attempt ever waits here for a connection.
    """
    connector = aiohttp.TCPConnector(
        resolver=PinnedResolver(),
        use_dns_cache=False,
        limit=max_connections,
        limit_per_host=0,
        keepalive_timeout=15,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        headers={"user-agent": USER_AGENT},
    )


@dataclass(frozen=True, slots=True)
class AttemptResult:
    at: datetime
    duration: float  # seconds
    status_code: int | None = None
    error: str | None = None
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def duration_ms(self) -> int:
        return round(self.duration * 1000)


def _printable(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


async def _read_excerpt(response: aiohttp.ClientResponse) -> bytes:
    """Up to BODY_EXCERPT_BYTES of the answer; reads on to its end only when that end is near."""
    kept = bytearray()
    total = 0
    while total < DRAIN_BYTES:
        chunk = await response.content.read(DRAIN_BYTES - total)
        if not chunk:
            response.release()
            return bytes(kept)
        if len(kept) < BODY_EXCERPT_BYTES:
            kept += chunk[: BODY_EXCERPT_BYTES - len(kept)]
        total += len(chunk)
    # A large answer is not worth reading: the connection is closed rather than drained.
    response.close()
    return bytes(kept)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.InvalidURL):
        return f"the URL cannot be requested: {exc}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the receiver closed the connection without answering"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"could not connect: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return f"the receiver's answer broke off: {exc}"
    return f"{type(exc).__name__}: {exc}"


@dataclass(eq=False, slots=True)
class Sender:
    session: aiohttp.ClientSession
    _: KW_ONLY
    timeout: float
    allow_private: bool = False
    dns_timeout: float = 2.0
    # The system's, or a test's (a name that rebinds).
    resolver: Resolver = system_resolver

    async def send(self, url: str, headers: dict[str, str], body: bytes) -> AttemptResult:
        """Makes one attempt. Never raises for anything the network or the receiver does."""
        at = utcnow()
        started = time.perf_counter()

        def result(
            status_code: int | None = None, error: str | None = None, retry_after: str | None = None
        ) -> AttemptResult:
            return AttemptResult(
                at=at,
                duration=time.perf_counter() - started,
                status_code=status_code,
                error=error[:ERROR_CHARS] if error is not None else None,
                retry_after=retry_after,
            )

        status: int | None = None
        excerpt = b""
        location = retry_after = None
        try:
            async with asyncio.timeout(self.timeout):
                checked = await check_url(
                    url, allow_private=self.allow_private, dns_timeout=self.dns_timeout, resolver=self.resolver
                )
                token = _checked.set(checked)
                try:
                    async with self.session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                        status = response.status
                        location = response.headers.get("location")
                        retry_after = response.headers.get(RETRY_AFTER)
                        excerpt = await _read_excerpt(response)
                finally:
                    _checked.reset(token)
        except UnsafeUrl as exc:
            return result(error=f"refused: {exc.message}")
        except DnsUnavailable as exc:
            return result(error=str(exc))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # Once the status line is in, it decides: a body that breaks off or drags on changes nothing.
            if status is None:
                return result(
                    error=f"no answer within {self.timeout:g}s" if isinstance(exc, TimeoutError) else _describe(exc)
                )
        if 200 <= status < 300:
            return result(status_code=status)
        detail = f"HTTP {status}"
        if 300 <= status < 400:
            detail += f" (redirects are not followed; Location: {(location or '-')[:200]})"
        text = _printable(excerpt)
        if text:
            detail += f": {text}"
        return result(status_code=status, error=detail, retry_after=retry_after)
