"""The server's protocol refuses a request the shedder refuses from its head alone: the 503 is
written before uvicorn builds a scope or starts a task for it, and the app never sees it
(`shared/serving/protocol.py`, `shared/admission.py`). Real processes: tests/e2e/test_overload.py."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry
from uvicorn import Config
from uvicorn.server import ServerState

from shared.admission import ADMITTED, SHEDDER_KEY, AdaptiveLimit, AdmissionMetrics, LimitSettings, Shedder
from shared.serving import serving_protocol
from shared.settings import ProcessSettings


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.eof = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 8000) if name in {"peername", "sockname"} else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def resume_reading(self) -> None:
        pass


def connect(app, state):
    loop = asyncio.get_running_loop()
    protocol = serving_protocol(ProcessSettings())(Config(app, log_config=None), ServerState(), state, _loop=loop)
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def test_the_protocol_refuses_without_the_app_and_holds_an_admitted_requests_slot_until_its_task_ends():
    seen: list[tuple[str, bool]] = []
    answer = asyncio.Event()
    finished = asyncio.Event()

    async def app(scope, receive, send):
        seen.append((scope["path"], ADMITTED in scope))
        await answer.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        # Work after the answer (or after the client left) still holds the slot.
        await finished.wait()

    gate = AdaptiveLimit(LimitSettings(1, 1, 1, 1.5, 0.2, 0.1, 0, 0.0, 1))
    state = {SHEDDER_KEY: Shedder(gate, AdmissionMetrics(CollectorRegistry()))}
    protocol, transport = connect(app, state)
    protocol.data_received(b"GET /products HTTP/1.1\r\nHost: x\r\n\r\n")
    assert gate.in_flight == 1  # taken by the protocol, as the head arrived
    (task,) = protocol.tasks
    await asyncio.sleep(0)
    assert seen == [("/products", True)]
    # Refused while the slot is held: answered here, and the app never sees it.
    second, other = connect(app, state)
    second.data_received(b"GET /orders HTTP/1.1\r\nHost: x\r\n\r\nGET /products HTTP/1.1\r\nHost: x\r\n\r\n")
    assert other.written.count(b"HTTP/1.1 503 Service Unavailable\r\n") == 2
    assert not second.tasks
    assert not other.closed
    answer.set()
    await asyncio.sleep(0.01)
    assert transport.written.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert gate.in_flight == 1  # answered, but its task goes on
    protocol.connection_lost(None)
    assert gate.in_flight == 1  # the client left, the work goes on
    finished.set()
    await task
    assert gate.in_flight == 0
    # Room again: the next request on the refused connection is read as a request and admitted.
    other.written.clear()
    second.data_received(b"GET /products HTTP/1.1\r\nHost: x\r\n\r\n")
    (task,) = second.tasks
    await task
    assert seen[-1] == ("/products", True)
    assert other.written.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert gate.in_flight == 0
    second.connection_lost(None)


async def test_a_refused_request_with_a_body_closes_its_connection_and_nothing_behind_it_runs():
    seen: list[str] = []

    async def app(scope, receive, send):
        seen.append(scope["path"])

    gate = AdaptiveLimit(LimitSettings(1, 1, 1, 1.5, 0.2, 0.1, 0, 0.0, 1))
    state = {SHEDDER_KEY: Shedder(gate, AdmissionMetrics(CollectorRegistry()))}
    assert gate.enter(0)  # the one slot is taken
    protocol, transport = connect(app, state)
    protocol.data_received(
        b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{}{}}GET /products HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert transport.written.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"connection: close\r\n" in transport.written
    assert transport.written.count(b"HTTP/1.1") == 1
    assert transport.eof
    assert transport.closed
    assert not protocol.tasks
    assert seen == []
    protocol.connection_lost(None)
    # A HEAD request is refused without a body.
    protocol, transport = connect(app, state)
    protocol.data_received(b"HEAD /products HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, rest = bytes(transport.written).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert rest == b""
    assert not transport.closed
    protocol.connection_lost(None)
