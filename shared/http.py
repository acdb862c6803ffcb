"""Calls to other services: `ServiceClient` calls one named service through the process's pool
(`shared/pool.py`), with an internal identity.

Every call goes through the called service's circuit breaker, is counted and timed, and a safe call is
retried when it got no answer (short of a timeout), a keyed write when the service never got it
(`shared/calls.py`). A 502/503/504 problem that a
service relays from its own upstream keeps naming the service that failed, and a 503's `Retry-After`
is passed on (`shared/failures.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanKind, StatusCode
from yarl import URL

from shared.admission import DEADLINE_HEADER_NAME, deadline_var, format_deadline
from shared.calls import CallPolicy, ServiceCalls
from shared.contract import IDEMPOTENCY_HEADER, IDENTITY_HEADER, READY_PATH, Identity
from shared.errors import DeadlineExceeded, UpstreamError
from shared.failures import failure_of
from shared.fleet import Instance
from shared.settings import ProcessSettings, ServiceAddress, service_address
from shared.telemetry import (
    ERROR_TYPE,
    HTTP_REQUEST_METHOD,
    PEER_EXTENSION,
    PEER_SERVICE,
    SERVER_ADDRESS,
    SERVER_PORT,
    URL_FULL,
    URL_TEMPLATE,
    finish_client_span,
    traceparent_of,
)

if TYPE_CHECKING:
    from shared.identity_token import IdentitySigner

IDEMPOTENCY_KEY = IDEMPOTENCY_HEADER.lower()


@dataclass(slots=True)
class Answer:
    """A service's answer as the gateway relays it: status, raw headers (lower-case names) and body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class ServiceClient(ServiceCalls):
    """Calls one named service with an internal identity, through its circuit breaker, mapping
    failures to 502/503/504 naming the service that failed.

    `send` speaks httpx; `forward` relays a request's bytes through the pool's aiohttp session (the
    same connections) without httpx's layers: the gateway's forwarded routes take it."""

    def __init__(
        self,
        name: str,
        base_url: str | ServiceAddress,
        client: httpx.AsyncClient,
        signer: IdentitySigner,
        policy: CallPolicy | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        address = base_url if isinstance(base_url, ServiceAddress) else service_address(base_url)
        super().__init__(name, address, policy or CallPolicy(ProcessSettings()))
        self.client = client
        self.session = session
        self.signer = signer
        settings = self.policy.settings
        # The whole call within the timeout (one timer per call, not one per read of the socket).
        self._forward_timeout = aiohttp.ClientTimeout(
            total=settings.http_timeout_seconds, sock_connect=settings.http_connect_timeout_seconds
        )
        self._tracer = self.policy.tracer
        # Instances found through DNS are called at their addresses; over TLS the name is what the
        # certificate and the Host header carry.
        self._sni = address.dns_name if address.dns_name is not None and address.scheme == "https" else None
        self._host = f"{address.dns_name}:{address.port}" if self._sni else None
        self._extensions: dict[str, Any] = {PEER_EXTENSION: name}
        if self._sni:
            self._extensions["sni_hostname"] = self._sni

    async def send(
        self,
        method: str,
        path: str,
        *,
        identity: Identity,
        headers: Mapping[str, str] | list[tuple[str, str]] | list[tuple[bytes, bytes]] | None = None,
        content: bytes | None = None,
        json: Any = None,
        params: Any = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call override of the pool's timeout
    ) -> httpx.Response:
        """Sends a request; answers with the response of any status below 500, or raises a
        upstream error (CircuitOpen at once while the service's circuit is open). Within a request
        that has a deadline (`shared/admission.py`) the call carries it on and takes no longer than the
        time left of it; once it has passed, 504 `DEADLINE_EXCEEDED` without a call."""
        deadline = deadline_var.get()
        if deadline is not None:
            left = deadline - time.time()
            if left <= 0:
                raise DeadlineExceeded(f"The request's deadline passed before the call to the {self.name} service.")
            timeout = min(timeout if timeout is not None else self.policy.settings.http_timeout_seconds, left)

        async def call() -> tuple[int, httpx.Response, Instance]:
            fleet = self.fleet
            request_headers = httpx.Headers(headers)
            request_headers[IDENTITY_HEADER] = self.signer.sign(identity, self.name)
            if self._host is not None:
                request_headers["Host"] = self._host
            retries = self._retries(method, IDEMPOTENCY_HEADER in request_headers)
            deadline = deadline_var.get()
            if deadline is not None:
                request_headers[DEADLINE_HEADER_NAME] = format_deadline(deadline)
            loop = asyncio.get_running_loop()
            now = loop.time()
            given = None if timeout is None else now + timeout
            # Retries fit in the call's time: its own timeout, or the pool's.
            deadline = given if given is not None else now + self.policy.settings.http_timeout_seconds
            instance = fleet.single or fleet.choose(now) or await self._first_instance(method, deadline)
            fleet.budget.deposit(now)
            tried: list[Instance] | None = None
            while True:
                attempt = instance
                left = None if given is None else max(0.001, given - loop.time())
                if fleet.tracked:
                    fleet.begin(attempt, now)
                try:
                    response = await self.client.request(
                        method,
                        attempt.base_url + path,
                        headers=request_headers,
                        content=content,
                        json=json,
                        params=params,
                        timeout=left if left is not None else httpx.USE_CLIENT_DEFAULT,
                        extensions=self._extensions,
                    )
                    break
                except httpx.TransportError as exc:
                    tried = [*(tried or ()), attempt]
                    instance = await self._retry_or_raise(exc, method, tried, retries, deadline)
                finally:
                    if fleet.tracked:
                        began, now = now, loop.time()
                        fleet.end(attempt, began, now)
            if response.status_code >= 500:
                await response.aread()
            return response.status_code, response, attempt

        def failure(response: httpx.Response) -> tuple[UpstreamError, bool]:
            return failure_of(
                self.name,
                response.status_code,
                content_type=response.headers.get("content-type", ""),
                retry_after=response.headers.get("retry-after"),
                body=response.content,
            )

        return await self._through_breaker(method, call, failure, lambda response: "retry-after" in response.headers)

    async def forward(
        self,
        method: str,
        path: str,
        *,
        identity: Identity,
        headers: list[tuple[str, str]],
        body: bytes | None,
        query: bytes = b"",
        span_name: str,
        template: str,
        keep: frozenset[bytes],
    ) -> Answer:
        """Relays a request to the service (`headers` as they go, the identity added) and answers what
        it said, as bytes, with the headers named in `keep`; raises as `send` does. One client span,
        `span_name`, with `traceparent`."""
        target = path + ("?" + query.decode("latin-1") if query else "")
        if self.session is None:
            # The pure httpx transport (`http_transport=httpx`) has no session.
            response = await self.send(method, target, identity=identity, headers=headers, content=body)
            kept = [(name.lower(), value) for name, value in response.headers.raw if name.lower() in keep]
            return Answer(response.status_code, kept, response.content)

        async def call() -> tuple[int, Answer, Instance]:
            assert self.session is not None
            fleet = self.fleet
            headers.append((IDENTITY_HEADER, self.signer.sign(identity, self.name)))
            if self._host is not None:
                headers.append(("Host", self._host))
            deadline = deadline_var.get()
            if deadline is not None:
                headers.append((DEADLINE_HEADER_NAME, format_deadline(deadline)))
            retries = self._retries(method, any(name == IDEMPOTENCY_KEY for name, _ in headers))
            loop = asyncio.get_running_loop()
            now = loop.time()
            # A retry must still fit in the pool's timeout, counted from the first attempt.
            deadline = now + self.policy.settings.http_timeout_seconds
            instance = fleet.single or fleet.choose(now) or await self._first_instance(method, deadline)
            fleet.budget.deposit(now)
            span = self._tracer.start_span(
                span_name,
                kind=SpanKind.CLIENT,
                attributes={
                    HTTP_REQUEST_METHOD: method,
                    URL_FULL: instance.base_url + path,
                    URL_TEMPLATE: template,
                    SERVER_ADDRESS: instance.host,
                    SERVER_PORT: instance.port,
                    PEER_SERVICE: self.name,
                },
            )
            headers.append(("traceparent", traceparent_of(span)))
            trace_state = span.get_span_context().trace_state
            if trace_state:
                headers.append(("tracestate", trace_state.to_header()))
            tried: list[Instance] | None = None
            try:
                while True:
                    attempt = instance
                    if fleet.tracked:
                        fleet.begin(attempt, now)
                    try:
                        async with self.session.request(
                            method,
                            URL(attempt.base_url + target, encoded=True),
                            headers=headers,
                            data=body,
                            allow_redirects=False,
                            auto_decompress=False,
                            timeout=self._forward_timeout,
                            server_hostname=self._sni,
                        ) as response:
                            content = await response.read()
                        kept = [(name.lower(), value) for name, value in response.raw_headers if name.lower() in keep]
                        answer = Answer(response.status, kept, content)
                        break
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        tried = [*(tried or ()), attempt]
                        instance = await self._retry_or_raise(exc, method, tried, retries, deadline)
                        if instance is not attempt:
                            span.set_attributes(
                                {
                                    URL_FULL: instance.base_url + path,
                                    SERVER_ADDRESS: instance.host,
                                    SERVER_PORT: instance.port,
                                }
                            )
                    finally:
                        if fleet.tracked:
                            began, now = now, loop.time()
                            fleet.end(attempt, began, now)
            except BaseException as exc:
                span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
                span.set_status(StatusCode.ERROR)
                span.end()
                raise
            finish_client_span(span, answer.status)
            return answer.status, answer, attempt

        def failure(answer: Answer) -> tuple[UpstreamError, bool]:
            content_type, retry_after = answer.header(b"content-type"), answer.header(b"retry-after")
            return failure_of(
                self.name,
                answer.status,
                content_type=content_type.decode("latin-1") if content_type else "",
                retry_after=retry_after.decode("latin-1") if retry_after is not None else None,
                body=answer.body,
            )

        return await self._through_breaker(
            method, call, failure, lambda answer: answer.header(b"retry-after") is not None
        )

    async def _probe(self, instance: Instance) -> bool:
        """An ejected instance's health check: its `/health/ready`, untraced (a background loop)."""
        url = instance.base_url + READY_PATH
        headers = {"Host": self._host} if self._host else None
        with suppress_instrumentation():
            if self.session is not None:
                async with self.session.get(url, headers=headers, server_hostname=self._sni) as answer:
                    return answer.status == 200
            response = await self.client.get(url, headers=headers, extensions=self._extensions)
            return response.status_code == 200
