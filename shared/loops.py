"""A background loop that lives as long as a process's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any


@contextlib.asynccontextmanager
async def running_loop(
    run: Callable[[asyncio.Event], Coroutine[Any, Any, None]], *, name: str, stop_timeout: float, logger: logging.Logger
) -> AsyncIterator[None]:
    """Runs `run(stop)` as a task until the block ends; then sets `stop` and gives the loop
    `stop_timeout` seconds to finish what it is doing before it is cancelled."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(stop), name=name)
    try:
        yield
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, stop_timeout)
        except TimeoutError:
            logger.warning("%s still busy %.0fs after shutdown began: cancelled", name, stop_timeout)
