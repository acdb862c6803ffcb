"""Calls to the edge stores (Redis or in-process) with a deadline, and what a failure means.

A store that errors or does not answer within the timeout never fails a request by itself: the
stage decides, through its failure mode, whether the request goes on without it (open) or is
refused with 503 (closed). Every failure is counted; log lines are throttled so an outage does not
write one line per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

from redis.exceptions import RedisError
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.edge.metrics import EdgeMetrics
from shared.errors import ServiceUnavailable, send_problem

T = TypeVar("T")

logger = logging.getLogger("portico.gateway.edge")

LOG_EVERY_SECONDS = 10.0


class StoreUnavailable(Exception):
    """The store failed or timed out; `stage` says whose."""


class EdgeStoreUnavailable(ServiceUnavailable, code="EDGE_STORE_UNAVAILABLE", title="Service Unavailable"): ...


class StoreCaller:
    """Runs one stage's store calls under its deadline, counting and logging failures."""

    def __init__(self, stage: str, *, timeout: float | None, fail_open: bool, metrics: EdgeMetrics) -> None:
        """`timeout` None: the store does no I/O (in-process) and needs no deadline."""
        self.stage = stage
        self.timeout = timeout
        self.fail_open = fail_open
        self.metrics = metrics
        self._last_log = 0.0
        self._suppressed = 0

    async def __call__(self, call: Awaitable[T]) -> T:
        if self.timeout is None:
            return await call
        try:
            async with asyncio.timeout(self.timeout):
                return await call
        except (RedisError, OSError, TimeoutError) as exc:
            self.failed(exc)
            raise StoreUnavailable(self.stage) from exc

    def failed(self, exc: BaseException) -> None:
        outcome = "fail_open" if self.fail_open else "fail_closed"
        self.metrics.store_errors.labels(self.stage, outcome).inc()
        now = time.monotonic()
        if now - self._last_log < LOG_EVERY_SECONDS:
            self._suppressed += 1
            return
        logger.warning(
            "%s store failed (%s: %s); requests %s (%d more failures since the last line)",
            self.stage,
            type(exc).__name__,
            exc,
            "go on without it" if self.fail_open else "are refused with 503",
            self._suppressed,
            extra={"edge_stage": self.stage, "failure_mode": "open" if self.fail_open else "closed"},
        )
        self._last_log = now
        self._suppressed = 0

    async def without_store(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """What a request gets when the store failed: it goes on without the stage (fail open), or
        is answered 503 (fail closed)."""
        if self.fail_open:
            await app(scope, receive, send)
            return
        refusal = EdgeStoreUnavailable(
            f"The {self.stage} store is unavailable; try again shortly.",
            headers={"Retry-After": "1"},
            extra={"stage": self.stage},
        )
        await send_problem(refusal, scope, receive, send)
