"""Ending a task for sure.

On Python 3.11 a cancellation can be lost: `asyncio.wait_for` returns its inner call's result when
that call finishes just as the cancel lands (fixed in 3.12), and redis-py wraps its socket calls in
it. A task cancelled at that moment runs on as if nothing happened, so a caller that cancels it once
and waits may wait forever (a connection's stream that never ends, its slot never freed).
"""

from __future__ import annotations

import asyncio
from typing import Any

# How long a cancelled task may run on (its cleanup) before it is cancelled again.
RECANCEL_SECONDS = 0.1


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancels the tasks and waits until every one has ended, cancelling again any that runs on."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: whatever it ended with is of no interest now
