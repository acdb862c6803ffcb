"""The server's protocol refuses a request the shedder refuses from its head alone: the 503 is
written before uvicorn builds a scope or starts a task for it, and the app never sees it
(`shared/serving/protocol.py`, `shared/admission.py`). Real processes: tests/e2e/test_overload.py."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry
from uvicorn import Config
from uvicorn.server import ServerState

from shared.admission import SHEDDER_KEY, AdaptiveLimit, AdmissionMetrics, LimitSettings, Shedder
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


async def test_a_refused_request_never_reaches_the_app_and_an_admitted_one_does():
    seen: list[str] = []

    async def app(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    gate = AdaptiveLimit(LimitSettings(1, 1, 1, 1.5, 0.2, 0.1, 0, 0.0, 1))
    metrics = AdmissionMetrics(CollectorRegistry())
    state = {SHEDDER_KEY: Shedder(gate, metrics)}
    loop = asyncio.get_running_loop()
    protocol = serving_protocol(ProcessSettings())(Config(app, log_config=None), ServerState(), state, _loop=loop)
    transport = Transport()
    protocol.connection_made(transport)
    assert gate.enter(0)  # the one slot is taken
    protocol.data_received(b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{")
    assert transport.written.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert not protocol.tasks
    transport.written.clear()
    # The rest of the refused request's body is dropped; the next request is read as a request.
    protocol.data_received(b'"x"}')
    gate.leave(0.0)
    protocol.data_received(b"GET /products HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(protocol.tasks) == 1
    await asyncio.gather(*protocol.tasks)
    assert seen == ["/products"]
    assert transport.written.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert not transport.closed
    protocol.connection_lost(None)
