"""What every process's server refuses before the app sees a request (request heads over the limits,
431, or out of time, 408), and who may read /metrics. Real processes: the session's stack, and one
gateway of its own with other settings."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import httpx
import pytest

from scripts.devstack import Stack, free_port
from shared.contract import PROCESSES
from tests.conftest import ROOT

ALL = tuple(PROCESSES)
# The narrow gateway's SERVER_HEADER_TIMEOUT_SECONDS.
HEAD_TIMEOUT = 3.0
# How long a connection is watched for the close the header timeout owes: far past it, so that only a
# process without the timeout (one that never closes) fails, however busy the machine.
WATCH = HEAD_TIMEOUT + 30


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int  # bytes of the request written before the answer came

    def problem(self) -> dict:
        assert self.headers["content-type"] == "application/problem+json", self.headers
        problem: dict = json.loads(self.body)
        assert problem["status"] == self.status
        return problem


def _parse(raw: bytes, sent: int) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(body)))
    return Answer(status, headers, body[:length], sent)


def exchange(port: int, chunks: Iterator[bytes] | list[bytes], timeout: float = 30.0) -> Answer | None:
    """Writes `chunks` on a fresh connection, stopping as soon as the server answers or closes; then
    reads the answer. None when the connection ended without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # A small send buffer: what was sent is close to what the server was offered.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 128 * 1024)
        sent = 0
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                sent += len(chunk)
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        raw = b""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                data = sock.recv(65536)
                if not data:
                    break
                raw += data
                if b"\r\n\r\n" in raw:
                    answer = _parse(raw, sent)
                    if len(answer.body) >= int(answer.headers.get("content-length", 0)):
                        return answer
        except ConnectionResetError:
            pass
        return _parse(raw, sent) if raw else None


def request(target: str = "/health/live", headers: Sequence[tuple[str, str]] = ()) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def assert_431(answer: Answer | None) -> dict:
    assert answer is not None, "the connection closed without an answer"
    assert answer.status == 431, answer
    assert answer.headers["connection"] == "close"
    problem = answer.problem()
    assert problem["error_code"] == "REQUEST_HEADERS_TOO_LARGE"
    assert problem["title"] == "Request Header Fields Too Large"
    assert problem["request_id"] == answer.headers["x-request-id"]
    return problem


@pytest.mark.parametrize("name", ALL)
def test_every_process_refuses_request_heads_over_the_default_limits(stack: Stack, name: str):
    port = stack.ports[name]
    # Inside every limit: 16 KiB lines, 64 KiB in all, 100 fields.
    fine = [("X-Line", "a" * (16 * 1024 - 12))] + [(f"X-F{i}", "b" * 400) for i in range(98)]
    answer = exchange(port, [request(headers=fine)])
    assert answer is not None
    assert answer.status == 200, answer

    cases = [
        (request(headers=[("X-Line", "a" * 16 * 1024)]), "a header line exceeds 16384 bytes"),
        (request(target="/health/live?" + "q" * 16 * 1024), "the request target exceeds 16384 bytes"),
        (request(headers=[(f"X-{i}", "a" * 8000) for i in range(9)]), "the request head exceeds 65536 bytes"),
        (request(headers=[(f"X-{i}", "1") for i in range(101)]), "more than 100 header fields"),
    ]
    for raw, reason in cases:
        assert reason in assert_431(exchange(port, [raw]))["detail"]


@pytest.mark.parametrize("name", ALL)
def test_every_process_answers_what_is_not_http_with_a_problem(stack: Stack, name: str):
    port = stack.ports[name]
    not_http = [
        b"FOO / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"POST /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
        b"POST /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n",
        b"GET http://[::1/health/live?token=secret HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # no URL
        b"GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n",  # no path
    ]
    for raw in not_http:
        answer = exchange(port, [raw])
        assert answer is not None, raw
        assert answer.status == 400, (raw, answer)
        assert answer.headers["connection"] == "close"
        problem = answer.problem()
        assert problem["error_code"] == "BAD_REQUEST"
        assert problem["request_id"] == answer.headers["x-request-id"]
        assert "secret" not in problem["detail"]


@pytest.mark.parametrize("name", ["gateway", "inventory"])
def test_a_huge_header_is_refused_after_the_limit_not_after_it_is_sent(stack: Stack, name: str):
    """40 MB of one header: the answer comes while the client is still writing, within a few reads
    past the limit, so the process never holds more than that."""

    def forty_megabytes() -> Iterator[bytes]:
        yield b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
        for _ in range(40 * 16):
            yield b"a" * 65536

    answer = exchange(stack.ports[name], forty_megabytes())
    assert_431(answer)
    assert answer is not None
    assert answer.sent < 4 * 1024 * 1024, answer.sent
    # Many small headers rather than one big one: the same.
    many = (b"X-%d: 1\r\n" % i for i in range(2_000_000))
    answer = exchange(stack.ports[name], iter([b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n", *many]))
    assert_431(answer)
    assert answer is not None
    assert answer.sent < 4 * 1024 * 1024, answer.sent
    # The process is none the worse.
    assert httpx.get(f"{stack.url(name)}/health/live").status_code == 200


def test_trailer_fields_of_a_chunked_body_count_as_header_fields(stack: Stack):
    port = stack.ports["gateway"]
    head = b"POST /v1/tenants HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n"

    def trailers() -> Iterator[bytes]:
        yield head
        for i in range(100_000):
            yield b"X-Trailer-%d: %s\r\n" % (i, b"t" * 1000)

    answer = exchange(port, trailers())
    # The request was under way when its trailers went over the limit: the connection is closed
    # (with the 431 when no answer had started).
    assert answer is None or answer.status == 431, answer
    assert httpx.get(f"{stack.url()}/health/live").status_code == 200


@pytest.mark.parametrize("name", ALL)
def test_every_process_serves_metrics_to_loopback(stack: Stack, name: str):
    response = httpx.get(f"{stack.url(name)}/metrics")
    assert response.status_code == 200
    assert "http_requests_total" in response.text


@pytest.fixture(scope="module")
def narrow_gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway whose limits are set: smaller heads, and /metrics for another network only."""
    gateway = Stack(
        ports={**stack.ports, "gateway": free_port()},
        env=stack.env,
        env_for={
            "gateway": {
                "GATEWAY_MAX_HEADER_LINE_BYTES": "1024",
                "GATEWAY_MAX_HEADER_BYTES": "4096",
                "GATEWAY_MAX_HEADER_FIELDS": "20",
                "GATEWAY_METRICS_ALLOWED_NETWORKS": "10.0.0.0/8,fd00::/8",
                "GATEWAY_SERVER_HEADER_TIMEOUT_SECONDS": str(HEAD_TIMEOUT),
            }
        },
        log_dir=tmp_path_factory.mktemp("narrow-gateway"),
        cwd=ROOT,
    )
    try:
        gateway.start_one("gateway")
        gateway.wait_ready(60)
        yield gateway
    finally:
        gateway.stop()


def test_the_limits_are_settings(narrow_gateway: Stack):
    port = narrow_gateway.ports["gateway"]
    fine = exchange(port, [request(headers=[("X-Line", "a" * 1000)])])
    assert fine is not None
    assert fine.status == 200
    assert "1024" in assert_431(exchange(port, [request(headers=[("X-Line", "a" * 1024)])]))["detail"]
    assert "4096" in assert_431(exchange(port, [request(headers=[(f"X-{i}", "a" * 900) for i in range(5)])]))["detail"]
    assert "20 header" in assert_431(exchange(port, [request(headers=[(f"X-{i}", "1") for i in range(20)])]))["detail"]


def test_metrics_are_404_outside_the_allowed_networks(narrow_gateway: Stack):
    base = narrow_gateway.url()
    refused = httpx.get(f"{base}/metrics")
    unknown = httpx.get(f"{base}/no-such-route")
    assert refused.status_code == unknown.status_code == 404
    assert refused.headers["content-type"] == "application/problem+json"
    problem, other = refused.json(), unknown.json()
    # Told apart from a path that is no route by nothing but the path.
    assert problem["error_code"] == other["error_code"] == "NOT_FOUND"
    assert problem["detail"] == "No route matches GET /metrics."
    assert {k: v for k, v in problem.items() if k not in ("detail", "request_id", "trace_id")} == {
        k: v for k, v in other.items() if k not in ("detail", "request_id", "trace_id")
    }
    # X-Forwarded-For is not believed.
    assert httpx.get(f"{base}/metrics", headers={"X-Forwarded-For": "10.1.2.3"}).status_code == 404


def read_to_end(sock: socket.socket) -> bytes:
    """What the server writes until it closes the connection (a reset ends it too)."""
    sock.settimeout(WATCH)
    raw = b""
    try:
        while data := sock.recv(65536):
            raw += data
    except ConnectionResetError:
        pass
    return raw


def test_a_request_head_dribbled_past_the_header_timeout_is_answered_408_and_closed(narrow_gateway: Stack):
    """A client writing its head a byte at a time, never ending it: the connection is answered 408 and
    closed once the timeout has passed since the connection was made, not before (half of it, for
    clocks), and not long after."""

    def endless_head() -> Iterator[bytes]:
        yield from (bytes([b]) for b in b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        while True:
            yield b"a"

    with socket.create_connection(("127.0.0.1", narrow_gateway.ports["gateway"]), timeout=WATCH) as sock:
        started = time.monotonic()
        for byte in endless_head():
            assert time.monotonic() - started < WATCH, f"the connection is still open after {WATCH} s"
            try:
                sock.sendall(byte)
            except (BrokenPipeError, ConnectionResetError):
                break
            if select.select([sock], [], [], 0.2)[0]:
                break
        raw = read_to_end(sock)
        closed_after = time.monotonic() - started
    assert closed_after >= HEAD_TIMEOUT / 2, f"closed after {closed_after:.2f} s"
    assert closed_after < WATCH, f"closed after {closed_after:.2f} s"
    answer = _parse(raw, 0)
    assert answer.status == 408, answer
    assert answer.headers["connection"] == "close"
    problem = answer.problem()
    assert problem["error_code"] == "REQUEST_HEAD_TIMEOUT"
    assert problem["detail"] == f"Refused: the request head did not arrive within {HEAD_TIMEOUT:g} s."


def assert_closed_unanswered(sock: socket.socket) -> None:
    """The connection is closed without an answer (nothing was asked), once the header timeout has
    passed from now (half of it, for clocks), and not long after."""
    started = time.monotonic()
    try:
        raw = read_to_end(sock)
    except TimeoutError:
        pytest.fail(f"the connection is still open after {WATCH} s")
    closed_after = time.monotonic() - started
    assert raw == b""
    assert HEAD_TIMEOUT / 2 <= closed_after < WATCH, f"closed after {closed_after:.2f} s"


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(narrow_gateway: Stack):
    with socket.create_connection(("127.0.0.1", narrow_gateway.ports["gateway"]), timeout=WATCH) as sock:
        assert_closed_unanswered(sock)


def test_blank_lines_after_an_answer_do_not_hold_the_connection_open(narrow_gateway: Stack):
    """A keep-alive client that sends only the blank line a parser skips before a request line: its
    next head's time runs from that byte, and the connection is closed once it is out (nothing was
    asked, so nothing is answered)."""
    with socket.create_connection(("127.0.0.1", narrow_gateway.ports["gateway"]), timeout=WATCH) as sock:
        sock.sendall(request())
        assert read_answer(sock).status == 200
        sock.sendall(b"\r\n")
        assert_closed_unanswered(sock)


def read_answer(sock: socket.socket) -> Answer:
    raw = b""
    while True:
        if b"\r\n\r\n" in raw:
            answer = _parse(raw, 0)
            if len(answer.body) >= int(answer.headers.get("content-length", 0)):
                return answer
        data = sock.recv(65536)
        assert data, f"closed without an answer: {raw!r}"
        raw += data


def test_the_header_timeout_runs_from_a_requests_first_byte_not_from_the_last_answer(narrow_gateway: Stack):
    """A keep-alive connection idle between requests for longer than the header timeout (but within
    the keep-alive timeout) still serves its next request."""
    with socket.create_connection(("127.0.0.1", narrow_gateway.ports["gateway"]), timeout=WATCH) as sock:
        sock.sendall(request())
        first = read_answer(sock)
        assert first.status == 200, first
        assert "close" not in first.headers.get("connection", "")
        time.sleep(HEAD_TIMEOUT + 1)
        sock.sendall(request())
        second = read_answer(sock)
        assert second.status == 200, second
