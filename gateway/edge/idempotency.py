"""Idempotency: a POST, PUT or PATCH sent again with the same `Idempotency-Key` runs once.

Following draft-ietf-httpapi-idempotency-key-header: the key is scoped to the tenant, the method and
the path, and also to the caller (the user or API key that sent it): the stored answer is replayed
before the route's scope checks run, so another caller of the tenant, perhaps one with fewer scopes,
must never be handed it. The first request takes a lock atomically together with its fingerprint (method, path,
query and a SHA-256 of the body); its response (status, headers, body) is stored for
`idempotency_ttl_seconds` before the last byte reaches the client, and later requests with the same
key get that response again with `Idempotent-Replayed: true`. While the first is in flight the same
key answers 409; the same key with another request answers 422. A process that dies mid-request
leaves a lock that expires after `idempotency_lock_seconds`.

Not stored (the lock is released, so the client can simply retry): 401, 402, 403, 408, 429 and 5xx,
answers about the caller or the moment rather than the operation. Responses marked
`Cache-Control: no-store` hold secrets (a new API key): their outcome is stored, their body is not,
and a repeat answers 409 instead of running twice. Anonymous requests are passed through (there is no
tenant to scope a key to); the key is always forwarded to the service.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.edge.metrics import EdgeMetrics
from gateway.edge.store import RedisClient, StoreCaller, StoreUnavailable
from gateway.settings import GatewaySettings
from shared.asgi import BodyChunks, header
from shared.context import principal_of, span_of
from shared.contract import (
    IDEMPOTENCY_HEADER,
    IDEMPOTENCY_KEY_PATTERN,
    IDEMPOTENT_METHODS,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    IdempotentResponseNotStored,
    InvalidIdempotencyKey,
)
from shared.errors import PorticoError, send_problem

if TYPE_CHECKING:
    from gateway.state import GatewaySlot

logger = logging.getLogger(__name__)

HEADER = IDEMPOTENCY_HEADER.lower().encode("ascii")
KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN.encode("ascii"))
REPLAYED = (b"idempotent-replayed", b"true")
# The server span's attribute: what the stage did (the outcomes of `gateway_idempotency_total`).
OUTCOME = "portico.idempotency.outcome"
# Response headers that belong to one exchange, not to the stored outcome.
UNSTORED_HEADERS = frozenset({b"content-length", b"x-request-id", b"date", b"server", b"set-cookie"})


def storable(status: int) -> bool:
    return status not in (401, 402, 403, 408, 429) and status < 500


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    # False: the request was done but its answer held a secret or was too large to keep.
    replayable: bool

    def encoded_headers(self) -> bytes:
        return json.dumps([[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers]).encode()

    @staticmethod
    def decode_headers(raw: bytes) -> list[tuple[bytes, bytes]]:
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in json.loads(raw)]


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: Literal["acquired", "in_flight", "mismatch", "done"]
    response: StoredResponse | None = None


class IdempotencyStore(Protocol):
    async def claim(self, scope_key: str, fingerprint: str, owner: str, lock_ms: int) -> Claim:
        """Takes the key for `owner` unless a record exists; answers what the record says."""

    async def complete(self, scope_key: str, owner: str, response: StoredResponse, ttl_ms: int) -> bool:
        """Stores the outcome, if `owner` still holds the key."""

    async def release(self, scope_key: str, owner: str) -> None:
        """Gives the key up, if `owner` still holds it and it is not done."""


# KEYS[1]: the record. ARGV: fingerprint, owner, lock ms.
CLAIM_LUA = """
local rec = redis.call('HMGET', KEYS[1], 'fp', 'st', 'own')
if not rec[1] then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'st', 'p', 'own', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'acquired'}
end
if rec[1] ~= ARGV[1] then return {'mismatch'} end
if rec[2] == 'p' then
  if rec[3] == ARGV[2] then return {'acquired'} end
  return {'in_flight'}
end
local r = redis.call('HMGET', KEYS[1], 'status', 'headers', 'body', 'replay')
return {'done', r[1], r[2], r[3] or '', r[4]}
"""

# ARGV: owner, status, headers, body, replayable (1/0), ttl ms.
COMPLETE_LUA = """
if redis.call('HGET', KEYS[1], 'own') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'st', 'd', 'status', ARGV[2], 'headers', ARGV[3], 'body', ARGV[4], 'replay', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
"""

# ARGV: owner.
RELEASE_LUA = """
local rec = redis.call('HMGET', KEYS[1], 'own', 'st')
if rec[1] == ARGV[1] and rec[2] == 'p' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


class RedisIdempotencyStore:
    def __init__(self, redis: RedisClient, prefix: str) -> None:
        self.prefix = prefix
        self._claim = redis.register_script(CLAIM_LUA)
        self._complete = redis.register_script(COMPLETE_LUA)
        self._release = redis.register_script(RELEASE_LUA)

    def key(self, scope_key: str) -> str:
        return self.prefix + "idem:" + scope_key

    async def claim(self, scope_key: str, fingerprint: str, owner: str, lock_ms: int) -> Claim:
        raw = await self._claim(keys=[self.key(scope_key)], args=[fingerprint, owner, lock_ms])
        outcome = raw[0].decode()
        if outcome != "done":
            return Claim(outcome)
        status, headers, body, replay = raw[1:5]
        return Claim("done", StoredResponse(int(status), StoredResponse.decode_headers(headers), body, replay == b"1"))

    async def complete(self, scope_key: str, owner: str, response: StoredResponse, ttl_ms: int) -> bool:
        args: list[bytes | str | int] = [
            owner,
            response.status,
            response.encoded_headers(),
            response.body,
            int(response.replayable),
            ttl_ms,
        ]
        return bool(await self._complete(keys=[self.key(scope_key)], args=args))

    async def release(self, scope_key: str, owner: str) -> None:
        await self._release(keys=[self.key(scope_key)], args=[owner])


@dataclass(slots=True)
class _Record:
    fingerprint: str
    owner: str
    expires_at: float  # monotonic
    response: StoredResponse | None = None
    size: int = 0  # bytes of the kept answer, counted against the store's bound


def _answer_size(scope_key: str, response: StoredResponse) -> int:
    """What a kept answer costs, roughly: its key, body and headers, plus the objects around them."""
    return len(scope_key) + len(response.body) + sum(len(k) + len(v) for k, v in response.headers) + 256


class MemoryIdempotencyStore:
    """The same records in-process, for a single gateway process without Redis.

    Bounded: the kept answers add up to at most `max_bytes`; storing one past that drops the oldest
    answers first (a repeat of a dropped key then runs again, as after the TTL). Claims of requests in
    flight are never dropped; there are as many as requests in flight, each a few hundred bytes.
    """

    SWEEP_EVERY = 1_000

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        # Claims in the order they were taken, answers in the order they were kept (`complete`
        # moves a record to the end): the oldest answer comes first.
        self._records: dict[str, _Record] = {}
        self._bytes = 0
        self._calls = 0
        self.evicted = 0

    @property
    def kept_bytes(self) -> int:
        return self._bytes

    def _drop(self, scope_key: str) -> None:
        record = self._records.pop(scope_key)
        self._bytes -= record.size

    def _live(self, scope_key: str, now: float) -> _Record | None:
        record = self._records.get(scope_key)
        if record is not None and record.expires_at <= now:
            self._drop(scope_key)
            return None
        return record

    def _evict(self) -> None:
        """Drops the oldest kept answers until the rest fit."""
        excess = self._bytes - self.max_bytes
        oldest: list[str] = []
        for scope_key, record in self._records.items():
            if excess <= 0:
                break
            if record.response is not None:
                oldest.append(scope_key)
                excess -= record.size
        for scope_key in oldest:
            self._drop(scope_key)
        if self.evicted == 0 or (self.evicted + len(oldest)) // 10_000 > self.evicted // 10_000:
            logger.warning(
                "the in-process idempotency store is full (%d bytes): dropped the %d oldest answers "
                "(%d so far); raise GATEWAY_IDEMPOTENCY_MEMORY_MAX_BYTES or use Redis",
                self.max_bytes,
                len(oldest),
                self.evicted + len(oldest),
            )
        self.evicted += len(oldest)

    async def claim(self, scope_key: str, fingerprint: str, owner: str, lock_ms: int) -> Claim:
        now = time.monotonic()
        self._calls += 1
        if self._calls % self.SWEEP_EVERY == 0:
            for stale in [k for k, r in self._records.items() if r.expires_at <= now]:
                self._drop(stale)
        record = self._live(scope_key, now)
        if record is None:
            self._records[scope_key] = _Record(fingerprint, owner, now + lock_ms / 1000)
            return Claim("acquired")
        if record.fingerprint != fingerprint:
            return Claim("mismatch")
        if record.response is None:
            return Claim("acquired" if record.owner == owner else "in_flight")
        return Claim("done", record.response)

    async def complete(self, scope_key: str, owner: str, response: StoredResponse, ttl_ms: int) -> bool:
        record = self._live(scope_key, time.monotonic())
        if record is None or record.owner != owner:
            return False
        record.response = response
        record.expires_at = time.monotonic() + ttl_ms / 1000
        record.size = _answer_size(scope_key, response)
        # Kept answers in the order they were kept: the oldest is dropped first.
        self._records[scope_key] = self._records.pop(scope_key)
        self._bytes += record.size
        if self._bytes > self.max_bytes:
            self._evict()
        return True

    async def release(self, scope_key: str, owner: str) -> None:
        record = self._live(scope_key, time.monotonic())
        if record is not None and record.owner == owner and record.response is None:
            self._drop(scope_key)


class Idempotency:
    """A store and how to call it (deadline, failure mode); built in the lifespan."""

    def __init__(self, store: IdempotencyStore, caller: StoreCaller) -> None:
        self.store = store
        self.call = caller


class _Disconnected(Exception):
    pass


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the client's own messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, *, settings: GatewaySettings, metrics: EdgeMetrics, state: GatewaySlot) -> None:
        self.app = app
        self.state = state
        self.lock_ms = int(settings.idempotency_lock_seconds * 1000)
        self.ttl_ms = settings.idempotency_ttl_seconds * 1000
        self.max_bytes = settings.idempotency_max_response_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in IDEMPOTENT_METHODS:
            await self.app(scope, receive, send)
            return
        raw_key = header(scope, HEADER)
        caller = principal_of(scope)
        tenant_id = caller.tenant_id
        if raw_key is None or tenant_id is None:
            await self.app(scope, receive, send)
            return
        if not KEY_RE.match(raw_key):
            await send_problem(InvalidIdempotencyKey(), scope, receive, send)
            return
        try:
            body = await _read_body(receive)
        except _Disconnected:
            return
        except PorticoError as exc:  # the body limit, enforced while the body arrives
            await send_problem(exc, scope, receive, send)
            return
        receive = _replaying(body, receive)

        method, path = scope["method"], scope["path"]
        subject = caller.subject.encode()
        key_hash = hashlib.sha256(b"\0".join([method.encode(), path.encode(), subject, raw_key])).hexdigest()
        # The caller's tenant as hash tag: on Redis Cluster a tenant's records share a slot.
        scope_key = f"{{t:{tenant_id}}}:{key_hash}"
        fingerprint = hashlib.sha256(
            b"\0".join([method.encode(), path.encode(), scope.get("query_string", b""), body])
        ).hexdigest()
        owner = uuid.uuid4().hex
        idempotency = self.state.value.idempotency
        try:
            claim = await idempotency.call(idempotency.store.claim(scope_key, fingerprint, owner, self.lock_ms))
        except StoreUnavailable:
            span_of(scope).set_attribute(OUTCOME, f"fail_{idempotency.call.mode}")
            await idempotency.call.without_store(self.app, scope, receive, send)
            return

        if claim.outcome == "acquired":
            await self._first(scope, receive, send, idempotency, scope_key, owner)
            return
        outcome = claim.outcome if claim.outcome != "done" else "replayed"
        self.metrics.idempotency.labels(outcome).inc()
        span = span_of(scope)
        span.set_attribute(OUTCOME, outcome)
        if claim.outcome == "mismatch":
            error: PorticoError = IdempotencyKeyReused()
        elif claim.outcome == "in_flight":
            error = IdempotencyKeyInUse()
        else:
            assert claim.response is not None
            if claim.response.replayable:
                span.add_event("idempotency.replayed", {"http.response.status_code": claim.response.status})
                await self._replay(claim.response, send)
                return
            error = IdempotentResponseNotStored(
                f"A request with this Idempotency-Key was already done ({claim.response.status}); its response "
                "held a secret or was too large and was not kept. List the resource to find the result."
            )
        await send_problem(error, scope, receive, send)

    async def _replay(self, response: StoredResponse, send: Send) -> None:
        headers = [*response.headers, REPLAYED, (b"content-length", str(len(response.body)).encode())]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body, "more_body": False})

    async def _first(
        self, scope: Scope, receive: Receive, send: Send, idempotency: Idempotency, scope_key: str, owner: str
    ) -> None:
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        body = BodyChunks(keep_up_to=self.max_bytes)
        settled = False

        span = span_of(scope)

        async def settle() -> None:
            nonlocal settled
            settled = True
            try:
                if not storable(status):
                    self.metrics.idempotency.labels("released").inc()
                    span.set_attribute(OUTCOME, "released")
                    await idempotency.call(idempotency.store.release(scope_key, owner))
                    return
                no_store = any(name == b"cache-control" and b"no-store" in value.lower() for name, value in headers)
                replayable = not no_store and body.complete
                kept = StoredResponse(
                    status,
                    [(k, v) for k, v in headers if k not in UNSTORED_HEADERS],
                    body.joined() if replayable else b"",
                    replayable,
                )
                outcome = "stored" if replayable else "stored_without_body"
                self.metrics.idempotency.labels(outcome).inc()
                span.set_attribute(OUTCOME, outcome)
                await idempotency.call(idempotency.store.complete(scope_key, owner, kept, self.ttl_ms))
            except StoreUnavailable:
                # Counted and logged by the caller; the lock expires on its own.
                pass

        async def capture(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", ())]
            elif message["type"] == "http.response.body":
                body.add(message.get("body", b""))
                if not message.get("more_body", False):
                    # Kept before the client sees the end, so a retry after the answer always finds it.
                    await settle()
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            if not settled:
                with contextlib.suppress(StoreUnavailable):
                    await idempotency.call(idempotency.store.release(scope_key, owner))
