"""API keys at the edge: `X-API-Key` resolved through the users service, remembered briefly.

The users service owns the keys; the gateway sends it the key's SHA-256 (never the key) and gets the
key's tenant, plan and scopes back. Answers, found or not, are cached in-process for
`api_key_cache_ttl_seconds`: that is the bound on how long a revoked key keeps working on a gateway
process other than the one that revoked it (that one forgets the key at once). A rotated key's grace
period ends on time: it is never cached past its expiry. Concurrent first uses of one key share one
lookup.

Known keys and unknown ones are cached apart, each bounded: a flood of distinct unknown keys fills
and churns the cache of unknown keys only, and never evicts a key that works. (How many unknown keys
an address may try is the authentication-failure limit's to say, `gateway/edge/authfailures.py`.)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import KW_ONLY, InitVar, dataclass, field
from datetime import datetime

from gateway.edge.metrics import EdgeMetrics
from shared.contract import ANONYMOUS, Identity, hash_api_key, key_subject
from shared.errors import UpstreamBadResponse
from shared.http import ServiceClient
from shared.request_id import request_id_headers


@dataclass(frozen=True, slots=True)
class _Entry:
    expires_at: float  # monotonic
    identity: Identity | None
    key_id: str | None


@dataclass(eq=False, slots=True)
class _BoundedCache:
    """Entries by key hash, at most `max_entries`, the oldest inserted evicted first."""

    max_entries: int
    entries: dict[str, _Entry] = field(init=False, default_factory=dict)

    def get(self, key_hash: str) -> _Entry | None:
        entry = self.entries.get(key_hash)
        return entry if entry is not None and entry.expires_at > time.monotonic() else None

    def put(self, key_hash: str, entry: _Entry) -> None:
        # Re-inserted at the end, so the dict's order stays the order of insertion.
        self.entries.pop(key_hash, None)
        # Entries share one lifetime (shortened only by a rotation's end), so the oldest inserted is the
        # first to expire: evicting from the front is O(1) per insert, even when a flood keeps the cache
        # full (a scan for expired entries would cost the whole cache each time).
        while len(self.entries) >= self.max_entries:
            del self.entries[next(iter(self.entries))]
        self.entries[key_hash] = entry

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(eq=False, slots=True)
class ApiKeyResolver:
    users: ServiceClient
    _: KW_ONLY
    ttl_seconds: float
    max_entries: InitVar[int]
    max_unknown_entries: InitVar[int]
    metrics: EdgeMetrics
    known: _BoundedCache = field(init=False)
    unknown: _BoundedCache = field(init=False)
    _pending: dict[str, asyncio.Task[_Entry]] = field(init=False, default_factory=dict)

    def __post_init__(self, max_entries: int, max_unknown_entries: int) -> None:
        self.known = _BoundedCache(max_entries)
        self.unknown = _BoundedCache(max_unknown_entries)

    def cached(self, raw_key: str) -> tuple[bool, Identity | None]:
        """(True, the identity or None for a key known to be bad) when this process remembers the key;
        (False, None) when only the users service can tell."""
        key_hash = hash_api_key(raw_key)
        entry = self.known.get(key_hash) or self.unknown.get(key_hash)
        if entry is None:
            return False, None
        self.metrics.api_keys.labels("cache", "valid" if entry.identity else "invalid").inc()
        return True, entry.identity

    def remembered(self, raw_key: str) -> Identity | None:
        """The identity of a working key this process remembers, without counting a lookup (a peek,
        for ranking a request before it is authenticated)."""
        entry = self.known.get(hash_api_key(raw_key))
        return entry.identity if entry is not None else None

    async def resolve(self, raw_key: str) -> Identity | None:
        """The identity of a key, or None when the key is unknown, revoked or expired."""
        found, identity = self.cached(raw_key)
        if found:
            return identity
        key_hash = hash_api_key(raw_key)
        task = self._pending.get(key_hash)
        if task is None:
            # A task of its own: a caller that goes away does not take the lookup down for the others.
            task = asyncio.create_task(self._lookup(key_hash))
            self._pending[key_hash] = task
            task.add_done_callback(lambda done: self._settle(key_hash, done))
        return (await asyncio.shield(task)).identity

    def _settle(self, key_hash: str, task: asyncio.Task[_Entry]) -> None:
        del self._pending[key_hash]
        if task.cancelled() or task.exception() is not None:
            return
        entry = task.result()
        self._store(key_hash, entry)
        self.metrics.api_keys.labels("users", "valid" if entry.identity else "invalid").inc()

    async def _lookup(self, key_hash: str) -> _Entry:
        response = await self.users.send(
            "POST",
            "/api-keys/resolve",
            identity=ANONYMOUS,
            json={"key_hash": key_hash},
            headers=request_id_headers(),  # the first of the requests waiting for this key
        )
        now = time.monotonic()
        if response.status_code == 404:
            return _Entry(now + self.ttl_seconds, None, None)
        if response.status_code != 200:
            raise UpstreamBadResponse("users", f"The users service answered {response.status_code} for an API key.")
        try:
            body = response.json()
            expires_at = datetime.fromisoformat(body["expires_at"]) if body.get("expires_at") else None
            identity = Identity(
                subject=key_subject(str(body["id"])),
                tenant_id=str(body["tenant_id"]),
                scopes=frozenset(str(s) for s in body["scopes"]),
                plan=str(body["plan"]),
                quota=_quota(body.get("monthly_quota")),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UpstreamBadResponse(
                "users", "The users service answered an API key lookup it cannot parse."
            ) from None
        ttl = self.ttl_seconds
        if expires_at is not None:
            ttl = max(0.0, min(ttl, expires_at.timestamp() - time.time()))
        return _Entry(now + ttl, identity, body["id"])

    def _store(self, key_hash: str, entry: _Entry) -> None:
        if entry.expires_at <= time.monotonic():
            return
        if entry.identity is None:
            self.unknown.put(key_hash, entry)
        else:
            self.unknown.entries.pop(key_hash, None)
            self.known.put(key_hash, entry)

    def forget(self, key_id: str) -> None:
        """Drops a key this process revoked or rotated, so the change applies here at once."""
        for stale in [h for h, e in self.known.entries.items() if e.key_id == key_id]:
            del self.known.entries[stale]


def _quota(value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise ValueError("monthly_quota")
    return value
