"""uvicorn's server, letting the app end its long-lived connections before uvicorn cuts them, and
keeping what the process built at startup out of the cyclic garbage collector's scans."""

from __future__ import annotations

import gc
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

# An app that has long-lived connections to end on its own terms before the server cuts them (the
# gateway's WebSockets close with 1013) sets `app.state.before_shutdown` to an async callable.
BEFORE_SHUTDOWN = "before_shutdown"


def before_shutdown_of(app: Any) -> Callable[[], Awaitable[None]] | None:
    state = getattr(app, "state", None)
    hook: Callable[[], Awaitable[None]] | None = getattr(state, BEFORE_SHUTDOWN, None)
    return hook


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which on shutdown first lets the app close its long-lived connections
    (uvicorn itself would end every WebSocket with 1012 as its first step), and which freezes the
    objects of its startup (`gc.freeze`) once the app's lifespan has started."""

    def __init__(self, config: uvicorn.Config, before_shutdown: Callable[[], Awaitable[None]] | None) -> None:
        super().__init__(config)
        self.before_shutdown = before_shutdown

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            # What the process has built to serve (its modules, the app, clients, pools, caches) lives
            # as long as the process. Frozen, the cyclic collector no longer scans it: a full
            # collection of the gateway stops its loop for well under a millisecond instead of about
            # 100 ms (some 170,000 objects), which under load showed as the slowest answers' latency.
            gc.freeze()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.before_shutdown is not None:
            try:
                await self.before_shutdown()
            except Exception:
                logging.getLogger("portico").exception("closing long-lived connections before shutdown failed")
        await super().shutdown(sockets)
