"""Where order events wait for the gateway's real-time connections: one stream per tenant, and one live
stream of every tenant's events.

With Redis:

- a Redis Stream per tenant, `<prefix>events:{<tenant>}` (the tenant is the key's hash tag, so on a
  Redis Cluster each tenant's stream lives on one node), each entry's id being the event's id
  (`<seq>-0`), trimmed to about `GATEWAY_EVENTS_STREAM_MAXLEN` entries. Resuming reads it.
- the live stream, `<prefix>events:live`, the same events of every tenant (each entry names its
  tenant), trimmed alike. Each gateway instance reads it with ONE blocking read and hands each event
  to its tenant's connections, so how many tenants stream on an instance costs no Redis connections.

Every gateway instance reads both, so any instance serves any tenant. Embedded (no Redis), the same in
this process.

Entries are only ever added in id order (the relay reads the orders feed in order), so a tenant's
stream always holds an unbroken run of its tenant's events: everything after its `floor`. What is
older than that was trimmed and is read back from the orders feed. A batch goes to the tenants'
streams before it goes to the live stream, so an event a live reader has seen is in its tenant's
stream already: a connection that subscribes and then reads its backlog misses nothing in between.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from redis.exceptions import ResponseError

from gateway.edge.store import RedisClient
from shared.events import FeedEvent

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event as the connections send it: its id, its tenant, its type and its envelope, encoded once."""

    id: int
    tenant_id: str
    type: str
    data: str  # the envelope, JSON

    @classmethod
    def from_feed(cls, event: FeedEvent) -> StreamEvent:
        return cls(event.seq, event.tenant_id, event.type, json.dumps(event.envelope(), separators=(",", ":")))

    def frame(self) -> str:
        """The WebSocket message: `{"id", "type", "data"}`."""
        return f'{{"id":{self.id},"type":{json.dumps(self.type)},"data":{self.data}}}'


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """An entry of the live stream: the event, and the id of the entry added before it (0: none), by
    which a reader tells that entries it never read were trimmed away."""

    event: StreamEvent
    prev: int


class EventStore(Protocol):
    async def append(self, events: Sequence[StreamEvent]) -> None:
        """Adds a batch of any tenants' events, in id order: to the tenants' streams, then to the live
        stream. One already there (another instance added it) is skipped."""

    async def after(self, tenant_id: str, after: int, count: int) -> list[StreamEvent]:
        """Up to `count` events of the tenant with id > `after`, oldest first."""

    async def floor(self, tenant_id: str) -> int:
        """Every event of the tenant with an id above this is in its stream (older ones may be trimmed)."""

    async def head(self) -> int:
        """The newest event's id in the live stream, 0 when it has none."""

    async def listen(self, after: int, count: int, timeout: float) -> list[LiveEvent]:  # noqa: ASYNC109
        """Up to `count` entries of the live stream with id > `after`, oldest first, waiting up to
        `timeout` seconds for one when there is none yet."""


def _entry_id(raw: Any) -> int:
    return int(_text(raw).partition("-")[0])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(tenant_id: str, entries: Any) -> list[StreamEvent]:
    """A tenant stream's entries `[(id, {field: value})]` as events."""
    return [
        StreamEvent(_entry_id(entry_id), tenant_id, _text(fields[b"type"]), _text(fields[b"data"]))
        for entry_id, fields in entries or ()
    ]


def _already_added(error: BaseException) -> bool:
    # XADD with an id that is not above the stream's last: another relay run added it first.
    return isinstance(error, ResponseError) and "equal or smaller" in str(error)


# KEYS[1] the live stream; ARGV[1] its MAXLEN, then id, tenant, type and data of each event, in id
# order. Atomic, so each entry's `prev` is the entry added before it, whichever relay added either.
_PUBLISH_LUA = """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local prev = '0-0'
if newest[1] then prev = newest[1][1] end
local added = 0
for i = 2, #ARGV, 4 do
  local reply = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], ARGV[i],
    'tenant', ARGV[i + 1], 'type', ARGV[i + 2], 'data', ARGV[i + 3], 'prev', prev)
  if type(reply) == 'table' and reply.err then
    if not string.find(reply.err, 'equal or smaller', 1, true) then return redis.error_reply(reply.err) end
  else
    prev = ARGV[i]
    added = added + 1
  end
end
return added
"""


class RedisEventStore:
    """Redis Streams: one per tenant, and the live one. `blocking` is a client of its own for the live
    stream's blocking read (one per gateway instance, holding one connection while it waits), so it
    never holds a connection the edge stages need."""

    def __init__(self, redis: RedisClient, blocking: RedisClient, prefix: str, maxlen: int) -> None:
        self.redis = redis
        self.blocking = blocking
        self.prefix = prefix
        self.maxlen = maxlen
        # No tenant's key can be this one: theirs are all `events:{...}`.
        self.live_key = f"{prefix}events:live"
        self._publish = redis.register_script(_PUBLISH_LUA)

    def key(self, tenant_id: str) -> str:
        return f"{self.prefix}events:{{{tenant_id}}}"

    async def append(self, events: Sequence[StreamEvent]) -> None:
        if not events:
            return
        # One round trip for the whole batch, whichever tenants (and Cluster nodes) it touches.
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            pipe.xadd(
                self.key(event.tenant_id),
                {"type": event.type, "data": event.data},
                id=f"{event.id}-0",
                maxlen=self.maxlen,
                approximate=True,
            )
        for result in await pipe.execute(raise_on_error=False):
            if isinstance(result, BaseException) and not _already_added(result):
                raise result
        args: list[str | int] = [self.maxlen]
        for event in events:
            args += [f"{event.id}-0", event.tenant_id, event.type, event.data]
        await self._publish(keys=[self.live_key], args=args)

    async def after(self, tenant_id: str, after: int, count: int) -> list[StreamEvent]:
        entries = await self.redis.xrange(self.key(tenant_id), min=f"({after}-0", max="+", count=count)
        return _decode(tenant_id, entries)

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

    async def head(self) -> int:
        entries = await self.redis.xrevrange(self.live_key, max="+", min="-", count=1)
        return _entry_id(entries[0][0]) if entries else 0

    async def listen(self, after: int, count: int, timeout: float) -> list[LiveEvent]:  # noqa: ASYNC109
        answer: Any = await self.blocking.xread(
            {self.live_key: f"{after}-0"}, count=count, block=max(1, int(timeout * 1000))
        )
        if not answer:
            return []
        # RESP2 answers [[key, entries]], RESP3 {key: [entries]}.
        entries = next(iter(answer.values()))[0] if isinstance(answer, dict) else answer[0][1]
        return [
            LiveEvent(
                StreamEvent(
                    _entry_id(entry_id), _text(fields[b"tenant"]), _text(fields[b"type"]), _text(fields[b"data"])
                ),
                _entry_id(fields[b"prev"]),
            )
            for entry_id, fields in entries
        ]


class _TenantLog:
    __slots__ = ("events", "floor")

    def __init__(self, maxlen: int) -> None:
        self.events: deque[StreamEvent] = deque(maxlen=maxlen)
        self.floor = 0


class MemoryEventStore:
    """The embedded default: one gateway process, so the streams live in it."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self.logs: dict[str, _TenantLog] = {}
        self.live: deque[LiveEvent] = deque(maxlen=maxlen)
        self._changed = asyncio.Event()

    def _log(self, tenant_id: str) -> _TenantLog:
        log = self.logs.get(tenant_id)
        if log is None:
            log = self.logs[tenant_id] = _TenantLog(self.maxlen)
        return log

    async def append(self, events: Sequence[StreamEvent]) -> None:
        for event in events:
            log = self._log(event.tenant_id)
            if log.events and event.id <= log.events[-1].id:
                continue
            if len(log.events) == self.maxlen:
                log.floor = log.events[0].id
            log.events.append(event)
        prev = self.live[-1].event.id if self.live else 0
        for event in events:
            if event.id > prev:
                self.live.append(LiveEvent(event, prev))
                prev = event.id
        # Wake every waiter, then start a new round.
        self._changed.set()
        self._changed = asyncio.Event()

    async def after(self, tenant_id: str, after: int, count: int) -> list[StreamEvent]:
        log = self.logs.get(tenant_id)
        return _newer(log.events, after, count, lambda event: event.id) if log is not None else []

    async def floor(self, tenant_id: str) -> int:
        log = self.logs.get(tenant_id)
        return log.floor if log is not None else 0

    async def head(self) -> int:
        return self.live[-1].event.id if self.live else 0

    async def listen(self, after: int, count: int, timeout: float) -> list[LiveEvent]:  # noqa: ASYNC109
        found = _newer(self.live, after, count, lambda live: live.event.id)
        if found:
            return found
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return []
        return _newer(self.live, after, count, lambda live: live.event.id)


def _newer(items: deque[T], after: int, count: int, id_of: Callable[[T], int]) -> list[T]:
    """The first `count` of `items` (in id order) whose id is above `after`, read from the newest end,
    where readers almost always are."""
    found: list[T] = []
    for item in reversed(items):
        if id_of(item) <= after:
            break
        found.append(item)
    found.reverse()
    return found[:count]
