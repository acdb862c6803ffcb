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

import hashlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson
from starlette.types import Message, Receive, Scope

from gateway.edge.metrics import EdgeMetrics
from gateway.edge.ratelimit import (
    SLIDING_WINDOWS_FUNCTION,
    Policy,
    RedisRateLimitStore,
    Verdict,
    verdict_of,
    window_args,
)
from gateway.edge.store import Arg, Script, ScriptBatcher, StoreCaller
from gateway.settings import GatewaySettings
from shared.contract import (
    IDEMPOTENCY_HEADER,
    IDEMPOTENCY_KEY_PATTERN,
    IDEMPOTENT_METHODS,
    IDEMPOTENT_REPLAYED_HEADER,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    IdempotentResponseNotStored,
    Identity,
)
from shared.errors import PorticoError
from shared.request_id import REQUEST_ID_HEADER

logger = logging.getLogger(__name__)

HEADER = IDEMPOTENCY_HEADER.lower().encode("ascii")
KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN.encode("ascii"))
REPLAYED = (IDEMPOTENT_REPLAYED_HEADER.lower().encode("ascii"), b"true")
# The server span's attribute: what the stage did (the outcomes of `gateway_idempotency_total`).
OUTCOME = "portico.idempotency.outcome"
# Response headers that belong to one exchange, not to the stored outcome.
UNSTORED_HEADERS = frozenset({b"content-length", REQUEST_ID_HEADER, b"date", b"server", b"set-cookie"})


def storable(status: int, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether an answer is the request's outcome, kept for the key: not one about the caller's
    credentials or the moment. An error that says when to try again (`Retry-After`: the service's
    own 409 `IDEMPOTENCY_KEY_IN_USE` while its first attempt is still being undone, a 429) is about
    the moment, whatever its status."""
    if status >= 500 or status in (401, 402, 403, 408, 429):
        return False
    return status < 400 or not any(name == b"retry-after" for name, _ in headers)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    # False: the request was done but its answer held a secret or was too large to keep.
    replayable: bool

    def encoded_headers(self) -> bytes:
        return orjson.dumps([[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers])

    @staticmethod
    def decode_headers(raw: bytes) -> list[tuple[bytes, bytes]]:
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in orjson.loads(raw)]


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: Literal["acquired", "in_flight", "mismatch", "done"]
    response: StoredResponse | None = None


@dataclass(frozen=True, slots=True)
class KeyedRequest:
    """A keyed write as its record knows it: the key (scoped to tenant, method, path and caller), the
    request's fingerprint, and the owner this attempt claims the key as."""

    scope_key: str
    fingerprint: str
    owner: str


class IdempotencyStore(Protocol):
    async def claim(self, request: KeyedRequest, lock_ms: int) -> Claim:
        """Takes the key for the request's owner unless a record exists; answers what the record says."""

    async def complete(self, scope_key: str, owner: str, response: StoredResponse, ttl_ms: int) -> bool:
        """Stores the outcome, if `owner` still holds the key."""

    async def release(self, scope_key: str, owner: str) -> None:
        """Gives the key up, if `owner` still holds it and it is not done."""


# The claim of a record, as a Lua function: takes `key` for `owner` (for `lock` ms) unless a record
# exists, else answers what the record says.
CLAIM_FUNCTION = """
local function claim(key, fp, owner, lock)
  local rec = redis.call('HMGET', key, 'fp', 'st', 'own')
  if not rec[1] then
    redis.call('HSET', key, 'fp', fp, 'st', 'p', 'own', owner)
    redis.call('PEXPIRE', key, lock)
    return {'acquired'}
  end
  if rec[1] ~= fp then return {'mismatch'} end
  if rec[2] == 'p' then
    if rec[3] == owner then return {'acquired'} end
    return {'in_flight'}
  end
  local r = redis.call('HMGET', key, 'status', 'headers', 'body', 'replay')
  return {'done', r[1], r[2], r[3] or '', r[4]}
end
"""
# KEYS[1]: the record. ARGV: fingerprint, owner, lock ms.
CLAIM = Script(CLAIM_FUNCTION + "return claim(KEYS[1], ARGV[1], ARGV[2], ARGV[3])")
# A keyed write's rate limit and claim in one script: KEYS are the policies' counters, then the
# record; ARGV the fingerprint, owner and lock ms, then the windows' arguments. The key is claimed
# only when the request is admitted.
COUNT_AND_CLAIM = Script(
    SLIDING_WINDOWS_FUNCTION
    + CLAIM_FUNCTION
    + """
local out = sliding_windows(#KEYS - 1, 3)
if out[1] == 1 then
  local c = claim(KEYS[#KEYS], ARGV[1], ARGV[2], ARGV[3])
  for i = 1, #c do out[#out + 1] = c[i] end
end
return out
"""
)

# ARGV: owner, status, headers, body, replayable (1/0), ttl ms.
COMPLETE = Script("""
if redis.call('HGET', KEYS[1], 'own') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'st', 'd', 'status', ARGV[2], 'headers', ARGV[3], 'body', ARGV[4], 'replay', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
""")

# ARGV: owner.
RELEASE = Script("""
local rec = redis.call('HMGET', KEYS[1], 'own', 'st')
if rec[1] == ARGV[1] and rec[2] == 'p' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
""")


def claim_of(raw: Sequence[Any]) -> Claim:
    outcome = raw[0].decode()
    if outcome != "done":
        return Claim(outcome)
    status, headers, body, replay = raw[1:5]
    return Claim("done", StoredResponse(int(status), StoredResponse.decode_headers(headers), body, replay == b"1"))


class RedisIdempotencyStore:
    def __init__(self, scripts: ScriptBatcher, prefix: str) -> None:
        self.prefix = prefix
        self.scripts = scripts

    def key(self, scope_key: str) -> str:
        return self.prefix + "idem:" + scope_key

    async def claim(self, request: KeyedRequest, lock_ms: int) -> Claim:
        args: list[Arg] = [request.fingerprint, request.owner, lock_ms]
        return claim_of(await self.scripts.call(CLAIM, [self.key(request.scope_key)], args))

    async def count_and_claim(
        self,
        counters: RedisRateLimitStore,
        subject: str,
        policies: Sequence[Policy],
        request: KeyedRequest,
        lock_ms: int,
    ) -> tuple[Verdict, Claim | None]:
        """Counts a keyed write in its rate-limit policies and, when it is admitted, claims its key: one
        script, one round trip (the record and the counters share the tenant's hash tag)."""
        keys = [*counters.keys(subject, policies), self.key(request.scope_key)]
        args: list[Arg] = [request.fingerprint, request.owner, lock_ms, *window_args(policies, 1)]
        raw = await self.scripts.call(COUNT_AND_CLAIM, keys, args)
        verdict = verdict_of(policies, raw)
        return verdict, claim_of(raw[1 + 3 * len(policies) :]) if verdict.admitted else None

    async def complete(self, scope_key: str, owner: str, response: StoredResponse, ttl_ms: int) -> bool:
        args: list[bytes | str | int] = [
            owner,
            response.status,
            response.encoded_headers(),
            response.body,
            int(response.replayable),
            ttl_ms,
        ]
        return bool(await self.scripts.call(COMPLETE, [self.key(scope_key)], args))

    async def release(self, scope_key: str, owner: str) -> None:
        await self.scripts.call(RELEASE, [self.key(scope_key)], [owner])


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

    async def claim(self, request: KeyedRequest, lock_ms: int) -> Claim:
        scope_key, fingerprint, owner = request.scope_key, request.fingerprint, request.owner
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


class Disconnected(Exception):
    """The client went away before its request's body arrived."""


async def read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the client's own messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class Idempotency:
    """The idempotency stage: a store, how to call it (deadline, failure mode), and its rules. Built
    in the lifespan; the edge (`gateway/edge/pipeline.py`) runs it."""

    def __init__(
        self,
        store: IdempotencyStore,
        caller: StoreCaller,
        settings: GatewaySettings,
        metrics: EdgeMetrics,
        *,
        counts: RedisRateLimitStore | None = None,
    ) -> None:
        self.store = store
        self.call = caller
        self.metrics = metrics
        self.lock_ms = int(settings.idempotency_lock_seconds * 1000)
        self.ttl_ms = settings.idempotency_ttl_seconds * 1000
        self.max_bytes = settings.idempotency_max_response_bytes
        # With both on Redis, a keyed write's rate-limit count and its claim go in one script.
        self.counts = counts if isinstance(store, RedisIdempotencyStore) else None

    def count_and_claim(
        self, subject: str, policies: Sequence[Policy], request: KeyedRequest
    ) -> Callable[[], Awaitable[tuple[Verdict, Claim | None]]]:
        """The shared call that counts a keyed write (`RateLimiter.hit_with`) and claims its key."""
        store, counts = self.store, self.counts
        assert isinstance(store, RedisIdempotencyStore)
        assert counts is not None

        def call() -> Awaitable[tuple[Verdict, Claim | None]]:
            return store.count_and_claim(counts, subject, policies, request, self.lock_ms)

        return call

    @staticmethod
    def applies(method: str, identity: Identity) -> bool:
        """Keyed writes are scoped to a tenant: anonymous requests go through untouched."""
        return method in IDEMPOTENT_METHODS and identity.tenant_id is not None

    @staticmethod
    def request(scope: Scope, identity: Identity, raw_key: bytes, body: bytes) -> KeyedRequest:
        method, path = scope["method"].encode(), scope["path"].encode()
        key_hash = hashlib.sha256(b"\0".join([method, path, identity.subject.encode(), raw_key])).hexdigest()
        fingerprint = hashlib.sha256(b"\0".join([method, path, scope.get("query_string", b""), body])).hexdigest()
        # The caller's tenant as hash tag: on Redis Cluster a tenant's records share a slot.
        return KeyedRequest(f"{{t:{identity.tenant_id}}}:{key_hash}", fingerprint, uuid.uuid4().hex)

    async def claim(self, request: KeyedRequest) -> Claim:
        """Raises StoreUnavailable when the store failed."""
        return await self.call(self.store.claim(request, self.lock_ms))

    def refusal(self, claim: Claim, attributes: dict[str, Any]) -> PorticoError | None:
        """What a repeat is answered instead of running again: None for a replay of the stored answer
        (`claim.response`), else the error."""
        outcome = claim.outcome if claim.outcome != "done" else "replayed"
        self.metrics.idempotency.labels(outcome).inc()
        attributes[OUTCOME] = outcome
        if claim.outcome == "mismatch":
            return IdempotencyKeyReused()
        if claim.outcome == "in_flight":
            return IdempotencyKeyInUse()
        assert claim.response is not None
        if claim.response.replayable:
            return None
        return IdempotentResponseNotStored(
            f"A request with this Idempotency-Key was already done ({claim.response.status}); its response "
            "held a secret or was too large and was not kept. List the resource to find the result."
        )

    async def settle(
        self,
        request: KeyedRequest,
        status: int,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes | None,
        attributes: dict[str, Any],
    ) -> None:
        """Stores the first answer of a key (`body` None: held back, a secret or too large), or
        releases the key for an answer about the caller or the moment. Raises StoreUnavailable."""
        if not storable(status, headers):
            self.metrics.idempotency.labels("released").inc()
            attributes[OUTCOME] = "released"
            await self.call(self.store.release(request.scope_key, request.owner))
            return
        no_store = any(name == b"cache-control" and b"no-store" in value.lower() for name, value in headers)
        replayable = not no_store and body is not None
        kept = StoredResponse(
            status,
            [(k, v) for k, v in headers if k not in UNSTORED_HEADERS],
            body if replayable and body is not None else b"",
            replayable,
        )
        outcome = "stored" if replayable else "stored_without_body"
        self.metrics.idempotency.labels(outcome).inc()
        attributes[OUTCOME] = outcome
        await self.call(self.store.complete(request.scope_key, request.owner, kept, self.ttl_ms))

    async def release(self, request: KeyedRequest) -> None:
        await self.call(self.store.release(request.scope_key, request.owner))


def replay_message(response: StoredResponse) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers = [*response.headers, REPLAYED, (b"content-length", str(len(response.body)).encode())]
    return response.status, headers, response.body
