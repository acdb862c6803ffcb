"""Where order events wait for the gateway's real-time connections: one stream per tenant.

With Redis, a Redis Stream per tenant, `<prefix>events:{<tenant>}` (the tenant is the key's hash
tag, so on a Redis Cluster each tenant's stream lives on one node), each entry's id being the
event's id (`<seq>-0`), trimmed to about `GATEWAY_EVENTS_STREAM_MAXLEN` entries. Every gateway
instance reads it, so any instance serves any tenant. Embedded (no Redis), the same in this process.

Entries are only ever added in id order (the relay reads the orders feed in order), so a stream
always holds an unbroken run of its tenant's events: everything after its `floor`. What is older
than that was trimmed and is read back from the orders feed.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import ResponseError

from gateway.edge.store import RedisClient
from shared.events import FeedEvent


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event as the connections send it: its id, its type and its envelope, encoded once."""

    id: int
    type: str
    data: str  # the envelope, JSON

    @classmethod
    def from_feed(cls, event: FeedEvent) -> StreamEvent:
        return cls(event.seq, event.type, json.dumps(event.envelope(), separators=(",", ":")))

    def frame(self) -> str:
        """The WebSocket message: `{"id", "type", "data"}`."""
        return f'{{"id":{self.id},"type":{json.dumps(self.type)},"data":{self.data}}}'


class EventStore(Protocol):
    async def append(self, tenant_id: str, events: Sequence[StreamEvent]) -> None:
        """Adds events in id order; one already there (another instance added it) is skipped."""

    async def after(self, tenant_id: str, after: int, count: int) -> list[StreamEvent]:
        """Up to `count` events with id > `after`, oldest first."""

    async def wait(self, tenant_id: str, after: int, count: int, timeout: float) -> list[StreamEvent]:  # noqa: ASYNC109
        """Like `after`, but waits up to `timeout` seconds for one when there is none yet."""

    async def floor(self, tenant_id: str) -> int:
        """Every event of the tenant with an id above this is in the stream (older ones may be trimmed)."""

    async def last_id(self, tenant_id: str) -> int:
        """The newest event's id in the stream, 0 when it has none."""


def _entry_id(raw: Any) -> int:
    return int(_text(raw).partition("-")[0])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(entries: Any) -> list[StreamEvent]:
    """Stream entries `[(id, {field: value})]` as events."""
    return [
        StreamEvent(_entry_id(entry_id), _text(fields[b"type"]), _text(fields[b"data"]))
        for entry_id, fields in entries or ()
    ]


class RedisEventStore:
    """Redis Streams, one per tenant. `blocking` is a client of its own for the blocking reads (each
    waits on one connection), so they never hold the connections the edge stages need."""

    def __init__(self, redis: RedisClient, blocking: RedisClient, prefix: str, maxlen: int) -> None:
        self.redis = redis
        self.blocking = blocking
        self.prefix = prefix
        self.maxlen = maxlen

    def key(self, tenant_id: str) -> str:
        return f"{self.prefix}events:{{{tenant_id}}}"

    async def append(self, tenant_id: str, events: Sequence[StreamEvent]) -> None:
        key = self.key(tenant_id)
        for event in events:
            try:
                await self.redis.xadd(
                    key,
                    {"type": event.type, "data": event.data},
                    id=f"{event.id}-0",
                    maxlen=self.maxlen,
                    approximate=True,
                )
            except ResponseError as exc:
                # Added already: the id is the event's, so a second relay run adds nothing.
                if "equal or smaller" not in str(exc):
                    raise

    async def after(self, tenant_id: str, after: int, count: int) -> list[StreamEvent]:
        entries = await self.redis.xrange(self.key(tenant_id), min=f"({after}-0", max="+", count=count)
        return _decode(entries)

    async def wait(self, tenant_id: str, after: int, count: int, timeout: float) -> list[StreamEvent]:  # noqa: ASYNC109
        key = self.key(tenant_id)
        answer: Any = await self.blocking.xread({key: f"{after}-0"}, count=count, block=max(1, int(timeout * 1000)))
        if not answer:
            return []
        # RESP2 answers [[key, entries]], RESP3 {key: [entries]}.
        entries = next(iter(answer.values()))[0] if isinstance(answer, dict) else answer[0][1]
        return _decode(entries)

    async def floor(self, tenant_id: str) -> int:
        try:
            info: dict[str, Any] = await self.redis.xinfo_stream(self.key(tenant_id))
        except ResponseError:
            return 0  # no stream: no event of this tenant was ever added
        if info["entries-added"] == info["length"] or info.get("first-entry") is None:
            return 0  # nothing trimmed
        # Everything before the first entry may have been trimmed; Redis does not record what
        # trimming removed, only what XDEL did.
        return _entry_id(info["first-entry"][0]) - 1

    async def last_id(self, tenant_id: str) -> int:
        entries = await self.redis.xrevrange(self.key(tenant_id), max="+", min="-", count=1)
        return _entry_id(entries[0][0]) if entries else 0


class _TenantLog:
    __slots__ = ("changed", "events", "floor")

    def __init__(self, maxlen: int) -> None:
        self.events: deque[StreamEvent] = deque(maxlen=maxlen)
        self.floor = 0
        self.changed = asyncio.Event()


class MemoryEventStore:
    """The embedded default: one gateway process, so the streams live in it."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self.logs: dict[str, _TenantLog] = {}

    def _log(self, tenant_id: str) -> _TenantLog:
        log = self.logs.get(tenant_id)
        if log is None:
            log = self.logs[tenant_id] = _TenantLog(self.maxlen)
        return log

    async def append(self, tenant_id: str, events: Sequence[StreamEvent]) -> None:
        log = self._log(tenant_id)
        for event in events:
            if log.events and event.id <= log.events[-1].id:
                continue
            if len(log.events) == self.maxlen:
                log.floor = log.events[0].id
            log.events.append(event)
        # Wake every waiter, then start a new round.
        log.changed.set()
        log.changed = asyncio.Event()

    async def after(self, tenant_id: str, after: int, count: int) -> list[StreamEvent]:
        log = self.logs.get(tenant_id)
        if log is None:
            return []
        found: list[StreamEvent] = []
        for event in reversed(log.events):
            if event.id <= after:
                break
            found.append(event)
        found.reverse()
        return found[:count]

    async def wait(self, tenant_id: str, after: int, count: int, timeout: float) -> list[StreamEvent]:  # noqa: ASYNC109
        found = await self.after(tenant_id, after, count)
        if found:
            return found
        changed = self._log(tenant_id).changed
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            return []
        return await self.after(tenant_id, after, count)

    async def floor(self, tenant_id: str) -> int:
        log = self.logs.get(tenant_id)
        return log.floor if log is not None else 0

    async def last_id(self, tenant_id: str) -> int:
        log = self.logs.get(tenant_id)
        return log.events[-1].id if log is not None and log.events else 0
