"""What one stage of a request hands the next, kept in one typed place.

`ObservabilityMiddleware` (in every process, outside everything else) opens a `RequestContext` for
each request: the request id, the request's server span (stages record their decisions on it), and
the principal: in the gateway, what its authentication stage resolves; in a service, what the
internal identity token names (`shared/caller.py`). Later stages, error rendering
and route dependencies read it through the accessors below, never by a key of their own. The request
id is also in a context variable, for log lines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import INVALID_SPAN, Span
from starlette.types import Scope

from shared.request_id import CONTEXT_KEY, request_id_var

if TYPE_CHECKING:
    from shared.contract import Identity


@dataclass(slots=True)
class RequestContext:
    request_id: str
    # Who is calling, once the gateway's authentication stage ran (anonymous included), or once a
    # service verified the internal identity token (`shared/caller.py`).
    principal: Identity | None = None
    # How the principal proved itself (the gateway's `Caller`: a token's expiry, an API key), for
    # connections that outlive their request.
    caller: Any = None
    # The route template, once the gateway's edge matched the request (before any stage runs, so
    # that its own answers, a 401 or a 429, are labelled with it too).
    route: str | None = None
    # The request's server span; a non-recording one when the request is not traced or not sampled,
    # so a stage records on it without asking.
    span: Span = INVALID_SPAN
    # What the stages decided, set on the server span in one go when it ends.
    attributes: dict[str, Any] = field(default_factory=dict)

    def event(self, name: str, started: float) -> None:
        """Records a piece of the edge's work (a Redis call, named by its purpose) on the server span,
        with how long it took: `started` is its `time.perf_counter()`."""
        if self.span.is_recording():
            self.span.add_event(name, {"portico.duration_ms": round((time.perf_counter() - started) * 1000, 3)})


def open_context(scope: Scope, request_id: str, span: Span = INVALID_SPAN) -> RequestContext:
    context = scope[CONTEXT_KEY] = RequestContext(request_id, span=span)
    request_id_var.set(request_id)
    return context


def request_context(scope: Scope) -> RequestContext:
    context: RequestContext = scope[CONTEXT_KEY]
    return context


def request_context_of(scope: Scope) -> RequestContext | None:
    """The request's context, None outside `ObservabilityMiddleware` (an app driven without it)."""
    context: RequestContext | None = scope.get(CONTEXT_KEY)
    return context


def span_of(scope: Scope) -> Span:
    """The request's server span, to record what a stage decided (a non-recording span outside one)."""
    context = request_context_of(scope)
    return context.span if context is not None else INVALID_SPAN
