"""Calls to the edge stores (Redis or in-process) with a deadline, and what a failure means.

A store that errors or does not answer within the timeout never fails a request by itself: the
stage decides, through its failure mode, whether the request goes on without it (open), is refused
with 503 (closed), or, for rate limits, is counted by this process alone until the store answers
again (local, `gateway/edge/ratelimit.py`). Every such request is counted; log lines are throttled so
an outage does not write one line per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.edge.metrics import EdgeMetrics
from gateway.settings import FailureMode
from shared.errors import ServiceUnavailable, send_problem

T = TypeVar("T")

# A single Redis (or a proxy in front of several), or a Redis Cluster through redis-py's cluster client.
RedisClient = Redis | RedisCluster

logger = logging.getLogger("portico.gateway.edge")

LOG_EVERY_SECONDS = 10.0
WITHOUT_STORE: dict[FailureMode, str] = {
    "open": "go on without it",
    "closed": "are refused with 503",
    "local": "are counted by this gateway process alone",
}


class StoreUnavailable(Exception):
    """The store failed or timed out; `stage` says whose."""


class EdgeStoreUnavailable(ServiceUnavailable, code="EDGE_STORE_UNAVAILABLE", title="Service Unavailable"): ...


class StoreCaller:
    """Runs one stage's store calls under its deadline, counting and logging failures."""

    def __init__(self, stage: str, *, timeout: float | None, mode: FailureMode, metrics: EdgeMetrics) -> None:
        """`timeout` None: the store does no I/O (in-process) and needs no deadline."""
        self.stage = stage
        self.timeout = timeout
        self.mode = mode
        self.metrics = metrics
        self._outcome = self.metrics.store_errors.labels(stage, f"fail_{mode}")
        self._last_log = 0.0
        self._suppressed = 0
        self._failing = False

    async def __call__(self, call: Awaitable[T]) -> T:
        if self.timeout is None:
            return await call
        try:
            async with asyncio.timeout(self.timeout):
                result = await call
        except (RedisError, OSError, TimeoutError) as exc:
            self.failed(exc)
            raise StoreUnavailable(self.stage) from exc
        if self._failing:
            self._failing = False
            logger.info("%s store answers again", self.stage, extra={"edge_stage": self.stage})
        return result

    def failed(self, exc: BaseException) -> None:
        self._failing = True
        self._outcome.inc()
        now = time.monotonic()
        if now - self._last_log < LOG_EVERY_SECONDS:
            self._suppressed += 1
            return
        logger.warning(
            "%s store failed (%s: %s); requests %s (%d more failures since the last line)",
            self.stage,
            type(exc).__name__,
            exc,
            WITHOUT_STORE[self.mode],
            self._suppressed,
            extra={"edge_stage": self.stage, "failure_mode": self.mode},
        )
        self._last_log = now
        self._suppressed = 0

    def passed_by(self) -> None:
        """A request that did not ask the failing store (it is tried again later) but got the
        failure mode's outcome: counted like a failed call, never logged."""
        self._outcome.inc()

    async def without_store(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """What a request gets when the store failed: it goes on without the stage (open), or is
        answered 503 (closed; also what a stage without a local fallback does in `local` mode)."""
        if self.mode == "open":
            await app(scope, receive, send)
            return
        refusal = EdgeStoreUnavailable(
            f"The {self.stage} store is unavailable; try again shortly.",
            headers={"Retry-After": "1"},
            extra={"stage": self.stage},
        )
        await send_problem(refusal, scope, receive, send)
