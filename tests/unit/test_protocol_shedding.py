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

    def resume_reading(self) -> None:
        pass


async def test_the_protocol_refuses_without_the_app_and_holds_an_admitted_requests_slot_until_its_answer():
    seen: list[tuple[str, bool]] = []
    answer = asyncio.Event()

    async def app(scope, receive, send):
        seen.append((scope["path"], ADMITTED in scope))
        await answer.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    gate = AdaptiveLimit(LimitSettings(1, 1, 1, 1.5, 0.2, 0.1, 0, 0.0, 1))
    state = {SHEDDER_KEY: Shedder(gate, AdmissionMetrics(CollectorRegistry()))}
    loop = asyncio.get_running_loop()
    protocol = serving_protocol(ProcessSettings())(Config(app, log_config=None), ServerState(), state, _loop=loop)
    transport = Transport()
    protocol.connection_made(transport)
    protocol.data_received(b"GET /products HTTP/1.1\r\nHost: x\r\n\r\n")
    assert gate.in_flight == 1  # taken by the protocol, as the head arrived
    (task,) = protocol.tasks
    await asyncio.sleep(0)
    assert seen == [("/products", True)]
    # The slot is held until the answer is sent.
    other = Transport()
    second = serving_protocol(ProcessSettings())(Config(app, log_config=None), ServerState(), state, _loop=loop)
    second.connection_made(other)
    second.data_received(b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{")
    assert other.written.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert not second.tasks
    assert seen == [("/products", True)]
    answer.set()
    await task
    assert transport.written.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert gate.in_flight == 0
    # The rest of the refused request's body is dropped; the next request is read as a request.
    other.written.clear()
    second.data_received(b'"x"}')
    second.data_received(b"GET /products HTTP/1.1\r\nHost: x\r\n\r\n")
    (task,) = second.tasks
    await task
    assert seen[-1] == ("/products", True)
    assert other.written.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert not other.closed
    assert gate.in_flight == 0
    # A connection lost before its answer gives its slot back too.
    answer.clear()
    second.data_received(b"GET /products HTTP/1.1\r\nHost: x\r\n\r\n")
    assert gate.in_flight == 1
    second.connection_lost(None)
    assert gate.in_flight == 0
    answer.set()
    await asyncio.gather(*second.tasks, return_exceptions=True)
    protocol.connection_lost(None)
