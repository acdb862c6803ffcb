"""Aggregate routes: one public answer composed of calls to several services, all within one budget.

An aggregate is declared as data: its `Part`s, each naming the service it calls, how it calls it (a
`Fetch`), whether the answer is worth anything without it (`required`), and optionally a timeout of
its own, which is cut to what is left of the route's budget (`GATEWAY_AGGREGATE_TIMEOUT_SECONDS`).
Every part starts at once, through the one pooled client, each in a span of its own under the
request's span. Two ways to run them:

- `Composer.gather`: partial answers (`asyncio.gather`). Each part ends `ok`, `error`, `timeout` or
  `skipped` (its service's circuit is open: no call is made), with its service and time. A required
  part that fails is the answer (the service's own refusal, or 503/504 naming the service), and the
  parts still running are cancelled.
- `Composer.all_or_nothing`: checks (`asyncio.TaskGroup`). A check fails by raising `CheckFailed`;
  the first failure cancels the checks still running, whose status is then `cancelled`. A check that
  cannot be made (its service is down) is the answer, as for a required part.

A part that is cancelled (a sibling failed, the budget ran out) really stops: its request is aborted
and its connection closed, never returned to the pool half-read. A part may use another part's answer
(`call.value_of("stock")`); it still starts at once and waits only when it needs the value.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from opentelemetry.trace import Status, StatusCode, Tracer
from pydantic import BaseModel
from starlette.responses import Response

from gateway.upstreams import Upstreams, relay
from shared.contract import Identity
from shared.errors import (
    CircuitOpen,
    PorticoError,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
)
from shared.http import ServiceClient
from shared.request_id import request_id_headers

# The attributes of a part's (or a check's) span: its name, its service, and how it ended.
PART = "portico.part"
PART_SERVICE = "portico.service"
PART_STATUS = "portico.part.status"

PartStatus = Literal["ok", "error", "timeout", "skipped"]
CheckStatus = Literal["passed", "failed", "cancelled"]
# The error code of a service's refusal (a 4xx) whose body names none.
DOWNSTREAM_REFUSED = "DOWNSTREAM_REFUSED"


class UpstreamRefused(Exception):
    """A service answered a part's call with a 4xx: for a required part, its answer is the route's."""

    def __init__(self, service: str, response: httpx.Response) -> None:
        super().__init__(f"{service} answered {response.status_code}")
        self.service = service
        self.response = response

    @property
    def error_code(self) -> str:
        body = _json_or_none(self.response)
        code = body.get("error_code") if isinstance(body, dict) else None
        return str(code or DOWNSTREAM_REFUSED)

    @property
    def detail(self) -> str:
        body = _json_or_none(self.response)
        text = body.get("detail") if isinstance(body, dict) else None
        return str(text) if text else f"The {self.service} service answered {self.response.status_code}."


async def upstream_refused_handler(_: Any, exc: Exception) -> Response:
    """Relays a service's refusal of a required part as the service gave it (problem+json)."""
    assert isinstance(exc, UpstreamRefused)
    return relay(exc.service, exc.response)


class CheckFailed(Exception):
    """A check's verdict: the request would be refused for this reason."""

    def __init__(self, error_code: str, detail: str) -> None:
        super().__init__(detail)
        self.error_code = error_code
        self.detail = detail

    @classmethod
    def from_refusal(cls, refusal: UpstreamRefused) -> CheckFailed:
        return cls(refusal.error_code, refusal.detail)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


@dataclass(frozen=True)
class Call:
    """What a part's fetch is given: its service's client, the caller, the route's path parameters
    and body, its deadline, and the answers of the other parts."""

    client: ServiceClient
    identity: Identity
    params: Mapping[str, str]
    body: Any
    timeout: float
    values: Mapping[str, asyncio.Future[Any]]
    # Each part's service, and the parts whose answer this one is waiting for (or was, when the wait
    # was cut short).
    services: Mapping[str, str]
    waiting: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return request_id_headers()

    async def value_of(self, part: str) -> Any:
        """Another part's answer, once it has one (cancelled with this part if it never comes)."""
        self.waiting.append(part)
        value = await asyncio.shield(self.values[part])
        self.waiting.remove(part)
        return value

    def late(self, service: str) -> UpstreamTimeout:
        """The time ran out: the service this part was waiting for, its own or another part's."""
        late = self.services[self.waiting[-1]] if self.waiting else service
        return UpstreamTimeout(late, f"The {late} service did not answer in time.")

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Sends a request to the part's service; answers the JSON of a 2xx. A 4xx raises
        `UpstreamRefused`; a body that is not JSON is a bad answer (502 naming the service)."""
        response = await self.client.send(
            method, path, identity=self.identity, headers=self.headers, timeout=self.timeout, **kwargs
        )
        if response.status_code >= 400:
            raise UpstreamRefused(self.client.name, response)
        try:
            return response.json()
        except (ValueError, UnicodeDecodeError):
            raise UpstreamBadResponse(
                self.client.name, f"The {self.client.name} service answered something that is not JSON."
            ) from None


Fetch = Callable[[Call], Awaitable[Any]]


def get_json(path: str, query: Mapping[str, str] | None = None, shape: Callable[[Any], Any] | None = None) -> Fetch:
    """A part that GETs `path` (and `query`), both formatted with the route's path parameters, and
    answers the JSON (through `shape`, which raises ValueError/KeyError/TypeError for a bad answer)."""

    async def fetch(call: Call) -> Any:
        params = {name: value.format_map(call.params) for name, value in (query or {}).items()}
        body = await call.json("GET", path.format_map(call.params), params=params or None)
        return _shaped(call.client.name, body, shape)

    return fetch


def _shaped(service: str, body: Any, shape: Callable[[Any], Any] | None) -> Any:
    if shape is None:
        return body
    try:
        return shape(body)
    except (ValueError, KeyError, TypeError):
        raise UpstreamBadResponse(service, f"The {service} service answered in an unexpected shape.") from None


def json_object(body: Any) -> dict[str, Any]:
    """The shape of an answer that must be a JSON object."""
    if not isinstance(body, dict):
        raise TypeError("not an object")
    return body


def page_of(body: Any) -> dict[str, Any]:
    """The shape of a list answer: `{"items": [...], "next_cursor"}`."""
    page = json_object(body)
    if not isinstance(page["items"], list):
        raise TypeError("items is not a list")
    return {"items": page["items"], "next_cursor": page.get("next_cursor")}


@dataclass(frozen=True)
class Part:
    """One call of an aggregate: its name in the answer, the service, the fetch, and whether the answer
    needs it. `timeout`: its own limit in seconds, cut to what is left of the route's budget."""

    name: str
    service: str
    fetch: Fetch
    required: bool = False
    timeout: float | None = None


@dataclass
class Outcome:
    """How one part or check ended."""

    service: str
    status: PartStatus | CheckStatus
    elapsed_ms: float = 0.0
    value: Any = None
    error_code: str | None = None
    detail: str | None = None
    error: BaseException | None = field(default=None, repr=False)


class _RequiredPartFailed(Exception):
    def __init__(self, part: Part, outcome: Outcome) -> None:
        super().__init__(outcome.status)
        self.part = part
        self.outcome = outcome


def _part_failure(part: Part, exc: BaseException) -> tuple[PartStatus, str, str]:
    """(status, error_code, detail) of a part that raised."""
    if isinstance(exc, CircuitOpen):
        return "skipped", exc.code, exc.detail
    if isinstance(exc, UpstreamTimeout):
        return "timeout", exc.code, exc.detail
    if isinstance(exc, UpstreamRefused):
        return "error", exc.error_code, exc.detail
    if isinstance(exc, PorticoError):
        return "error", exc.code, exc.detail
    return "error", UpstreamBadResponse.error_code, f"The {part.service} service's answer could not be used."


def _as_error(part: Part, outcome: Outcome) -> BaseException:
    """What a required part's failure answers: the service's own refusal, or an upstream error."""
    error = outcome.error
    if isinstance(error, UpstreamRefused | UpstreamError):
        return error
    if outcome.status == "timeout":
        return UpstreamTimeout(part.service, f"The {part.service} service did not answer in time.")
    return UpstreamBadResponse(part.service, outcome.detail or f"The {part.service} service failed.")


class Composer:
    """Runs aggregates through this gateway's upstreams, within `budget` seconds each."""

    def __init__(self, upstreams: Upstreams, tracer: Tracer, budget: float) -> None:
        self.upstreams = upstreams
        self.tracer = tracer
        self.budget = budget

    def _calls(
        self, parts: Sequence[Part], identity: Identity, params: Mapping[str, str], body: Any
    ) -> tuple[float, dict[str, asyncio.Future[Any]], Callable[[Part], Call]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.budget
        values: dict[str, asyncio.Future[Any]] = {part.name: loop.create_future() for part in parts}
        services = {part.name: part.service for part in parts}

        def call_for(part: Part) -> Call:
            left = max(0.0, deadline - loop.time())
            timeout = left if part.timeout is None else min(part.timeout, left)
            return Call(self.upstreams[part.service], identity, params, body, timeout, values, services)

        return deadline, values, call_for

    async def _timed(self, part: Part, call: Call, values: Mapping[str, asyncio.Future[Any]]) -> Any:
        """A part's answer within its deadline. A fetch that trips over the answer it got (not an
        object, a missing or ill-typed field) is a bad answer from the part's service (502 naming it),
        for every part and check alike. Out of time, the late service is named: the part's own, or
        that of the part whose answer it was waiting for (all share one deadline, and whichever
        timer fires first must not blame a service that answered)."""
        try:
            async with asyncio.timeout(call.timeout):
                value = await part.fetch(call)
        except TimeoutError:
            raise call.late(part.service) from None
        except (LookupError, TypeError, ValueError, AttributeError):
            raise UpstreamBadResponse(
                part.service, f"The {part.service} service answered in an unexpected shape."
            ) from None
        values[part.name].set_result(value)
        return value

    async def gather(
        self, parts: Sequence[Part], identity: Identity, params: Mapping[str, str], body: Any = None
    ) -> dict[str, Outcome]:
        """Runs every part at once; answers each part's outcome. A required part's failure raises."""
        _, values, call_for = self._calls(parts, identity, params, body)

        async def run(part: Part) -> Outcome:
            started = time.perf_counter()
            with self.tracer.start_as_current_span(
                f"part {part.name}", attributes={PART: part.name, PART_SERVICE: part.service}
            ) as span:
                try:
                    value = await self._timed(part, call_for(part), values)
                    outcome = Outcome(part.service, "ok", value=value)
                except asyncio.CancelledError:
                    span.set_attribute(PART_STATUS, "cancelled")
                    raise
                except Exception as exc:  # every failure of a part is reported in its outcome
                    status, code, detail = _part_failure(part, exc)
                    outcome = Outcome(part.service, status, error_code=code, detail=detail, error=exc)
                    span.set_status(Status(StatusCode.ERROR, detail))
                outcome.elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
                span.set_attribute(PART_STATUS, outcome.status)
                if outcome.status != "ok":
                    values[part.name].cancel()
                    if part.required:
                        raise _RequiredPartFailed(part, outcome)
                return outcome

        tasks = [asyncio.ensure_future(run(part)) for part in parts]
        try:
            results = await asyncio.gather(*tasks)
        except _RequiredPartFailed as failed:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise _as_error(failed.part, failed.outcome) from None
        finally:
            for task in tasks:
                task.cancel()
        return {part.name: result for part, result in zip(parts, results, strict=True)}

    async def all_or_nothing(
        self, checks: Sequence[Part], identity: Identity, params: Mapping[str, str], body: Any = None
    ) -> dict[str, Outcome]:
        """Runs every check in one task group: the first failure cancels the others. Answers each
        check's outcome (`passed`, `failed`, `cancelled`); a check that cannot be made raises."""
        _, values, call_for = self._calls(checks, identity, params, body)
        outcomes = {check.name: Outcome(check.service, "cancelled") for check in checks}

        async def run(check: Part) -> None:
            started = time.perf_counter()
            outcome = outcomes[check.name]
            with self.tracer.start_as_current_span(
                f"check {check.name}", attributes={PART: check.name, PART_SERVICE: check.service}
            ) as span:
                try:
                    outcome.value = await self._timed(check, call_for(check), values)
                    outcome.status = "passed"
                except CheckFailed as failed:
                    outcome.status, outcome.error_code, outcome.detail = "failed", failed.error_code, failed.detail
                    raise
                finally:
                    outcome.elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
                    span.set_attribute(PART_STATUS, outcome.status)
                    if outcome.status != "passed":
                        values[check.name].cancel()

        try:
            async with asyncio.TaskGroup() as group:
                for check in checks:
                    group.create_task(run(check))
        except* CheckFailed:
            pass  # recorded in the outcomes
        except* (PorticoError, UpstreamRefused) as group_error:
            raise _first(group_error) from None
        return outcomes


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def model_response(answer: BaseModel, headers: Mapping[str, str] | None = None) -> Response:
    """An aggregate's answer, built (and so checked) as the model the reference shows."""
    return Response(answer.model_dump_json(), media_type="application/json", headers=dict(headers or {}))
