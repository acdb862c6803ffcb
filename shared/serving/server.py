"""uvicorn's server, letting the app end its long-lived connections before uvicorn cuts them."""

from __future__ import annotations

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
    """uvicorn's server, which on shutdown first lets the app close its long-lived connections:
    uvicorn itself would end every WebSocket with 1012 as its first step."""

    def __init__(self, config: uvicorn.Config, before_shutdown: Callable[[], Awaitable[None]] | None) -> None:
        super().__init__(config)
        self.before_shutdown = before_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.before_shutdown is not None:
            try:
                await self.before_shutdown()
            except Exception:
                logging.getLogger("portico").exception("closing long-lived connections before shutdown failed")
        await super().shutdown(sockets)
