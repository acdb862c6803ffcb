"""uvicorn's httptools protocol with a bounded request head.

uvicorn's httptools protocol keeps whatever a client sends as a request's head, however large:
httptools collects a header's name and value across reads until the line ends, and uvicorn keeps
every header of the request. A client sending megabytes of header (or a hundred thousand small
headers) makes the process hold them all before any application code can refuse anything.

`BoundedHttpToolsProtocol` counts the head while it arrives and refuses it with 431 (problem+json)
and closes the connection as soon as it is over a limit:

- the bytes received while a head is incomplete, checked after each read: what the parser buffers
  is bounded by the total limit plus one read, never by what the client sends;
- each line (the request target, or one header's name and value) and the whole head, exactly, in the
  parser's callbacks;
- the number of header fields.

The trailer fields of a chunked body are header fields too, and count against the same limits.

A head must also arrive in time, as nginx's `client_header_timeout` has it: a connection whose
request head is not complete within `timeout_seconds` of its first byte (the first request's: of the
connection itself) is answered 408 (problem+json) and closed; one that has sent nothing at all is
closed without an answer. A client dribbling its headers a byte at a time no longer holds a
connection (and its buffers) for as long as it likes.

What the parser cannot read as HTTP/1.1 (an unknown method, a `Content-Length` that is no number) is
answered 400 `BAD_REQUEST` (problem+json, where uvicorn answers plain text) and the connection closed.

It also admits requests: when the lifespan state holds a `Shedder` (`shared/admission.py`, under
`SHEDDER_KEY`), each request head is shown to it before uvicorn starts a task for the request. A
request it admits takes its slot of the limit there and holds it until the app is done with it (its
task ends, answered or not, client there or gone), its scope marked `ADMITTED` so that the app's
admission stage lets it through. A request it refuses is answered 503 `OVERLOADED` on the spot, for a
few percent of what an answer costs: without a body its connection stays open for the next request
(unless the client asked otherwise); with one, the connection closes after the answer (lingering
as after a 431), so that a refused upload is neither read nor waited for, and nothing sent behind it
is served. A HEAD request's refusal has no body. A request pipelined behind one still being answered,
one expecting `100 Continue`, an upgrade, and a request on a connection whose client is not reading
its answers go on to the app, whose own admission stage decides.

It costs a few integer operations per read and per header, and one timer per request head. Any
uvicorn-based server can use it: `python -m <process>` passes it to uvicorn with the process's
limits (`serving_protocol`); `uvicorn --http shared.serving:BoundedHttpToolsProtocol` and
gunicorn's uvicorn worker (its `CONFIG_KWARGS["http"]`) get the default limits. Servers with their
own HTTP parser (granian, h11) apply their own limits instead; the docs list them.

It subclasses uvicorn's `HttpToolsProtocol` and so relies on some of its internals (its parser
callbacks, `_unset_keepalive_if_required`, `_should_upgrade`, ...): uvicorn is pinned to one minor
release in pyproject.toml, and `tests/unit/test_serving_internals.py` fails on any change of what is
used here.
"""

from __future__ import annotations

import contextvars
import logging
import time
import urllib.parse
import uuid
from asyncio import Handle, TimerHandle
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import httptools
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from shared.admission import ADMITTED, SHEDDER_KEY, Shedder
from shared.errors import INTERNAL_DETAIL, BadRequest, PorticoError, problem_response
from shared.settings import ProcessSettings

logger = logging.getLogger("portico.server")

# After a refusal, how much more of the head is read and discarded, and for how long, before the
# connection is closed: a client that writes before it reads then gets the 431 rather than a reset.
LINGER_BYTES = 8 * 1024 * 1024
LINGER_SECONDS = 2.0
# When the server shuts down, how long a connection without a request in progress (just accepted, or
# idle after an answer) may take to send its next request, which is then answered and is its last.
NEXT_REQUEST_SECONDS = 2.0


class RequestHeadersTooLarge(
    PorticoError, status=431, code="REQUEST_HEADERS_TOO_LARGE", title="Request Header Fields Too Large"
):
    """A request head over `MAX_HEADER_LINE_BYTES`, `MAX_HEADER_BYTES` or `MAX_HEADER_FIELDS`,
    answered by the server while it arrives, with `Connection: close`."""


@dataclass(frozen=True, slots=True)
class HeaderLimits:
    line_bytes: int = 16 * 1024
    total_bytes: int = 64 * 1024
    fields: int = 100
    # From a request's first byte (the first request's: from the connection) to its head's end.
    timeout_seconds: float = 10.0

    @classmethod
    def of(cls, settings: ProcessSettings) -> HeaderLimits:
        return cls(
            settings.max_header_line_bytes,
            settings.max_header_bytes,
            settings.max_header_fields,
            settings.server_header_timeout_seconds,
        )


class RequestHeadTimeout(PorticoError, status=408, code="REQUEST_HEAD_TIMEOUT", title="Request Timeout"):
    """A request head not complete within `SERVER_HEADER_TIMEOUT_SECONDS` of its first byte, answered by
    the server with `Connection: close`."""


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a head that is over a limit, or that cannot be read."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing request heads over `limits` with 431, and those that do
    not arrive within them with 408."""

    limits: ClassVar[HeaderLimits] = HeaderLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # True while header fields may be arriving: from the end of one request until the next one's
        # headers are complete, and from a chunk's size line until its data (after the last chunk:
        # the trailer fields).
        self._counting = True
        # Bytes received while counting: bounds what the parser buffers.
        self._head_bytes = 0
        # The parsed head: its exact size (target and fields) and its number of fields.
        self._head_size = 0
        self._fields = 0
        # The deadline of the request head on its way (or, once it passed, the verdict waiting for the
        # loop's pending reads); None when no head is on its way.
        self._head_timer: Handle | None = None
        # Whether any byte of that head has arrived (a connection that sent nothing is not answered).
        self._head_started = False
        self._refusal: str | None = None
        self._refusal_error: type[PorticoError] = RequestHeadersTooLarge
        self._linger_budget = 0
        self._linger_timer: TimerHandle | None = None
        # The server is shutting down: the request that arrives is the connection's last.
        self._closing = False
        # Refuses requests from their heads under overload (filled by the lifespan before any
        # connection is accepted); None: the app decides every request.
        self._shedder: Shedder | None = self.app_state.get(SHEDDER_KEY)
        # The request on its way was refused here under overload: answered already (no other answer
        # may follow it), its body (if any) not served.
        self._shed = False
        # The request whose head just arrived was admitted here (`time.perf_counter()` then): its
        # slot is given back when its task ends (`_start_asgi_task`).
        self._admitted_at: float | None = None

    # uvicorn's reading of the connection, with the count in front of the parser

    # Any: asyncio's Protocol declares a BaseTransport here, uvicorn's a Transport.
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        # The first request's head has its time from the connection on, so that a connection that
        # sends nothing, or too little, does not stay open either.
        self._start_head_clock()

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            self._discard(len(data))
            return
        idle = self.timeout_keep_alive_task is not None
        self._unset_keepalive_if_required()
        if idle and self._head_timer is None:
            # The first byte after an answer: the next request's head has its time from here, even
            # when these bytes are only the blank lines a parser skips before a request line.
            self._start_head_clock()
        if self._counting:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._refusal is None:
                self._refusal, self._refusal_error = _unreadable(exc)
            self._refuse()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._counting and self._head_bytes > self.limits.total_bytes:
            # Still no end of the head: what is buffered already is over the limit.
            self._refusal = f"the request head exceeds {self.limits.total_bytes} bytes"
            self._refuse()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self._stop_head_clock()
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # uvicorn's, and a request admitted here gives its slot back when its task ends: once the app
        # is done with it, whether it answered, failed, or lost its client.
        if self.config.reset_contextvars:
            task = self.loop.create_task(cycle.run_asgi(app), context=contextvars.Context())
        else:
            task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        admitted_at = self._admitted_at
        if admitted_at is not None:
            self._admitted_at = None
            assert self._shedder is not None
            release = self._shedder.release
            task.add_done_callback(lambda _: release(admitted_at))

    # Shutting down (SIGTERM, or a worker replaced after its `max_requests`)

    def shutdown(self) -> None:
        """uvicorn closes every connection without a request in progress at once: one it has just
        accepted whose first request is still on its way, and a keep-alive one whose client is sending
        its next request as the answer to the last one arrives. Either client, which did nothing
        wrong, gets a reset (and a worker replaced after its `max_requests` does this to every busy
        keep-alive client it has). Such a connection is given `NEXT_REQUEST_SECONDS` instead: a
        request that arrives is answered with `Connection: close`; then the connection closes."""
        if self._refusal is None and (self.cycle is None or self.cycle.response_complete):
            self._closing = True
            self._linger_timer = self.loop.call_later(NEXT_REQUEST_SECONDS, self._close_unless_busy)
            return
        super().shutdown()

    def _close_unless_busy(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()

    # Parser callbacks

    def on_message_begin(self) -> None:
        if self._refusal is not None:
            # A request behind one refused with `Connection: close`, in the same read: not served.
            raise _Refused(self._refusal)
        # A request that follows a refused one in the same read: the connection is not idle.
        self._unset_keepalive_if_required()
        super().on_message_begin()
        self._head_size = 0
        self._fields = 0
        self._head_started = True
        if self._head_timer is None:
            self._start_head_clock()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.line_bytes:
            self._stop(f"the request target exceeds {self.limits.line_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # As sent: `name: value` and the line's end.
        size = len(name) + len(value) + 4
        self._fields += 1
        self._head_size += size
        if size > self.limits.line_bytes:
            self._stop(f"a header line exceeds {self.limits.line_bytes} bytes")
        if self._fields > self.limits.fields:
            self._stop(f"the request has more than {self.limits.fields} header fields")
        if self._head_size + len(self.url) > self.limits.total_bytes:
            self._stop(f"the request head exceeds {self.limits.total_bytes} bytes")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_head_clock()
        self._head_started = False
        self._counting = False
        self._head_bytes = 0
        if self.url[:1] != b"/" and _no_path(self.url):
            # An absolute-form target without a path (`GET http://host HTTP/1.1`, what open-proxy
            # scanners send): uvicorn cannot read it (it fails on the missing path), so it is refused
            # here as what is not HTTP/1.1 is, a 400, rather than taken for a fault of ours.
            self._refusal_error = BadRequest
            self._stop("the request target has no path")
        if self._shedder is not None and self._shed_here(self._shedder):
            return
        super().on_headers_complete()
        if self._closing and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_chunk_header(self) -> None:
        self._counting = True

    def on_body(self, body: bytes) -> None:
        self._counting = False
        self._head_bytes = 0
        if self._shed:
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._counting = True
        self._head_bytes = 0
        if self._shed:
            if self._refusal is None:
                self._shed_complete()
            else:
                # The refused request's body is all read: nothing is lost by closing now.
                self.transport.close()
            return
        super().on_message_complete()

    # Shedding (overload)

    def _shed_here(self, shedder: Shedder) -> bool:
        """Shows the request whose head just arrived to the shedder: admitted, it goes on to the app
        holding its slot; refused, it is answered here with the shedder's 503 (True)."""
        cycle = self.cycle
        if (
            (cycle is not None and not cycle.response_complete)
            or self.expect_100_continue
            or self.flow.write_paused
            or self.parser.should_upgrade()
            or self.limit_concurrency is not None
        ):
            # The app decides: a pipelined request waits its turn (a slot would be held meanwhile),
            # and uvicorn's own concurrency limit may answer without the app.
            return False
        try:
            # The path as the app's scope will have it (uvicorn's own reading of the target).
            raw_path = httptools.parse_url(self.url).path
        except httptools.HttpParserInvalidURLError:
            return False  # the parser refuses it: answered 400 (`_unreadable`)
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = urllib.parse.unquote(path)
        method = self.parser.get_method()
        verdict = shedder.admit(method, path, self.headers)
        if verdict is True:
            # Given back when the request's task ends (`_start_asgi_task`).
            self._admitted_at = time.perf_counter()
            # An extension key of Portico's, which uvicorn's typed scope does not list.
            cast(dict[str, Any], self.scope)[ADMITTED] = True
            return False
        if verdict is False:
            return False
        head, body = verdict
        # A body on its way is not read: the connection closes after the answer (lingering, as for a
        # 431), so that a refused upload costs neither time nor memory.
        with_body = any(
            name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
            for name, value in self.headers
        )
        keep_alive = (
            not with_body
            and not self._closing
            and self.parser.should_keep_alive()
            and self.parser.get_http_version() == "1.1"
        )
        content = self._answer_start(503)
        content += [head, b"\r\n" if keep_alive else b"connection: close\r\n\r\n"]
        if method != b"HEAD":
            content.append(body)
        self.transport.write(b"".join(content))
        self._shed = True
        if not keep_alive:
            # Nothing more is read on this connection, not even a request already received behind it.
            self._refusal = "a refused request's connection closes"
            if with_body:
                self._linger()
            else:
                self.transport.close()
        return True

    def _shed_complete(self) -> None:
        """The refused request (without a body) is over: the connection waits for its next request, as
        after any answer."""
        self._shed = False
        if not self.transport.is_closing():
            handler = self.timeout_keep_alive_handler
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, handler)

    # The head's deadline

    def _start_head_clock(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.timeout_seconds, self._head_timed_out)

    def _stop_head_clock(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        # Bytes that arrived while the loop was busy elsewhere are still unread: the verdict waits one
        # whole turn of the loop, reads included, so a head that came in time is never refused because
        # this process was slow to read it. (Two steps: a callback scheduled now may run before the
        # loop's next poll for reads, one scheduled by that callback runs after it.)
        self._head_timer = self.loop.call_soon(self._after_pending_reads)

    def _after_pending_reads(self) -> None:
        self._head_timer = self.loop.call_soon(self._head_deadline_passed)

    def _head_deadline_passed(self) -> None:
        self._head_timer = None
        if self._refusal is not None or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # An earlier request on this connection is still being answered, and uvicorn reads no
            # further meanwhile (pipelining): this head is given another full period.
            self._start_head_clock()
            return
        if not self._head_started:
            # Nothing of a request arrived: nothing to answer.
            self.transport.close()
            return
        self._refusal = f"the request head did not arrive within {self.limits.timeout_seconds:g} s"
        self._refusal_error = RequestHeadTimeout
        self._refuse()

    # Refusing

    def _stop(self, reason: str) -> None:
        self._refusal = reason
        raise _Refused(reason)

    def _refuse(self) -> None:
        """Answers the refusal (431, 408 for a head out of time, 400 for what is not HTTP/1.1, 500 when
        reading it failed here) and closes the connection, unless
        an earlier request's answer is still being written on it, in which case the connection is
        closed at once."""
        assert self._refusal is not None
        self._stop_head_clock()
        if self._shed:
            # The request was answered already (refused under overload): no second answer.
            self.transport.close()
            return
        logger.info("refused a request head from %s: %s", self.client[0] if self.client else "?", self._refusal)
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()
            return
        # A fault of this process (a plain PorticoError) says nothing of its cause, as every 500.
        unexpected = self._refusal_error is PorticoError
        error = self._refusal_error(INTERNAL_DETAIL if unexpected else f"Refused: {self._refusal}.")
        response = problem_response(error, uuid.uuid4().hex)
        content = self._answer_start(error.status_code)
        for name, value in [*response.raw_headers, (b"connection", b"close")]:
            content += [name, b": ", value, b"\r\n"]
        content += [b"\r\n", bytes(response.body)]
        self.transport.write(b"".join(content))
        self._linger()

    def _answer_start(self, status: int) -> list[bytes]:
        """The status line and the server's default header lines (`Date`, `Server`) of an answer
        written here rather than by the app."""
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        return content

    def _linger(self) -> None:
        """After a last answer: read and drop what the client is still sending, within a bound (so
        that a client writing before it reads gets the answer rather than a reset), then close."""
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger_budget = LINGER_BYTES
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _discard(self, size: int) -> None:
        self._linger_budget -= size
        if self._linger_budget < 0:
            self.transport.close()


def _no_path(url: bytes) -> bool:
    try:
        return httptools.parse_url(url).path is None
    except httptools.HttpParserInvalidURLError:
        return False  # no URL at all: uvicorn's reading of it fails as the parser's, a 400 (`_unreadable`)


def _unreadable(exc: httptools.HttpParserError) -> tuple[str, type[PorticoError]]:
    """Why the parser stopped, and the error it is answered with, as problem+json where uvicorn
    answers in plain text. What is not HTTP/1.1 (an unknown method, a `Content-Length` that is no
    number, a target that is no URL) is the client's: 400. Any other exception a parser callback
    raised (httptools wraps it) is this process's own fault: 500, logged with its traceback. The
    reason names the parser's error class only: its message may quote the request (a target with a
    token in it), and the reason is logged."""
    cause = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else exc
    if isinstance(cause, httptools.HttpParserError):
        return f"the request is not valid HTTP/1.1 ({type(cause).__name__})", BadRequest
    logger.error("reading a request failed", exc_info=cause)
    return "reading the request failed", PorticoError


def serving_protocol(settings: ProcessSettings) -> type[BoundedHttpToolsProtocol]:
    """The bounded protocol with the process's header limits, for uvicorn's `http=`."""

    class Protocol(BoundedHttpToolsProtocol):
        limits = HeaderLimits.of(settings)

    return Protocol
