"""Calls to the edge stores (Redis or in-process) with a deadline, and what a failure means.

A store that errors or does not answer within the timeout never fails a request by itself: the
stage decides, through its failure mode, whether the request goes on without it (open), is refused
with 503 (closed), or, for rate limits, is counted by this process alone until the store answers
again (local, `gateway/edge/ratelimit.py`). Every such request is counted; log lines are throttled so
an outage does not write one line per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError, RedisError

from gateway.edge.metrics import EdgeMetrics
from gateway.settings import FailureMode
from shared.errors import ServiceUnavailable, retry_in

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


Arg = bytes | str | int | float


class Script:
    """A Lua script the batcher runs by its digest (EVALSHA), loading it when Redis does not know it."""

    __slots__ = ("lua", "sha")

    def __init__(self, lua: str) -> None:
        self.lua = lua
        self.sha = hashlib.sha1(lua.encode(), usedforsecurity=False).hexdigest()


class ScriptBatcher:
    """Runs the edge's Lua scripts, the calls of concurrent requests sent to Redis together.

    Each call is one script, atomic on its own, exactly as if it were sent alone; the calls made in
    one turn of the event loop (the requests that reached the rate limit at the same moment) go out
    as one pipeline: one write and one read of the socket for all of them, and one connection taken
    from the pool, instead of one each. Under load that is most of a call's cost; alone, a call waits
    for nothing (the batch is sent in the same turn). A script Redis does not know (it restarted, or
    flushed its scripts) is loaded and its calls sent again. A failed batch fails each of its calls,
    which each stage then handles through its failure mode.

    On Redis Cluster each call goes alone (redis-py's cluster pipelines refuse scripts); the cluster
    client sends it to the node that owns its keys' slot.

    `timeout`: a batch (or a call sent alone) that Redis has not answered by then fails each of its
    calls with TimeoutError: one deadline per batch, not one timer per call.
    """

    def __init__(self, redis: RedisClient, *, timeout: float | None = None, max_batch: int = 512) -> None:
        self.redis = redis
        self.timeout = timeout
        self.max_batch = max_batch
        self.alone = isinstance(redis, RedisCluster)
        self._pending: list[tuple[Script, Sequence[Arg], Sequence[Arg], asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """The script's answer; raises what Redis or the connection raised."""
        if self.alone:
            return await self._alone(script, keys, args)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((script, keys, args, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        elif len(self._pending) >= self.max_batch:
            self._flush()
        return await future

    async def _alone(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        async with asyncio.timeout(self.timeout):
            try:
                return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                await self.redis.script_load(script.lua)
                return await self.redis.evalsha(script.sha, len(keys), *keys, *args)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Script, Sequence[Arg], Sequence[Arg], asyncio.Future[Any]]]) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                results = await self._answers(batch)
        except Exception as exc:
            # Every caller gets the failure and follows its stage's failure mode.
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for *_, future in batch:
                future.cancel()
            raise
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _answers(
        self, batch: list[tuple[Script, Sequence[Arg], Sequence[Arg], asyncio.Future[Any]]]
    ) -> list[Any]:
        """The batch's answers, the scripts Redis did not know loaded and their calls sent again."""
        results = await self._execute(batch)
        missing = {
            script.lua: script
            for (script, *_), result in zip(batch, results, strict=True)
            if isinstance(result, NoScriptError)
        }
        if missing:
            for script in missing.values():
                await self.redis.script_load(script.lua)
            again = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
            for i, result in zip(again, await self._execute([batch[i] for i in again]), strict=True):
                results[i] = result
        return results

    async def _execute(self, batch: Sequence[tuple[Script, Sequence[Arg], Sequence[Arg], Any]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def aclose(self) -> None:
        """Waits for the batches in flight (their callers are waiting for them too)."""
        self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class StoreUnavailable(Exception):
    """The store failed or timed out; `stage` says whose."""


class EdgeStoreUnavailable(ServiceUnavailable, code="EDGE_STORE_UNAVAILABLE", title="Service Unavailable"):
    """Redis failed and the stage fails closed (`GATEWAY_*_FAILURE_MODE`): `stage` names it,
    `Retry-After: 1`."""


class StoreCaller:
    """Runs one stage's store calls, counting and logging failures (a call to Redis fails by its
    deadline too: `ScriptBatcher`'s)."""

    def __init__(self, stage: str, *, io: bool, mode: FailureMode, metrics: EdgeMetrics) -> None:
        """`io` False: the store is in-process and cannot fail."""
        self.stage = stage
        self.io = io
        self.mode = mode
        self.metrics = metrics
        self._outcome = self.metrics.store_errors.labels(stage, f"fail_{mode}")
        self._last_log = 0.0
        self._suppressed = 0
        self._failing = False

    async def __call__(self, call: Awaitable[T]) -> T:
        if not self.io:
            return await call
        try:
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

    def refusal(self) -> EdgeStoreUnavailable | None:
        """What a request gets when the store failed: None, it goes on without the stage (open), or
        a 503 (closed; also what a stage without a local fallback does in `local` mode)."""
        if self.mode == "open":
            return None
        return EdgeStoreUnavailable(
            f"The {self.stage} store is unavailable; try again shortly.",
            headers=retry_in(1),
            extra={"stage": self.stage},
        )
