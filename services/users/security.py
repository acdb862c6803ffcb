"""Password hashing (argon2 through pwdlib) and access-token issuing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from jose import jwt
from prometheus_client import CollectorRegistry, Counter
from pwdlib import PasswordHash

from services.users.errors import HashingBusy
from services.users.settings import UsersSettings
from services.users.signing import KeyRing
from shared.contract import Identity, identity_claims
from shared.db import utcnow
from shared.errors import retry_in

T = TypeVar("T")

_hasher = PasswordHash.recommended()
# Verified against when the email is unknown, so a login takes as long whether or not it exists.
_DUMMY_HASH = _hasher.hash("portico-timing-equaliser")


class PasswordMetrics:
    """What password checks and logins did, on the users service's /metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.hashing = Counter(
            "users_password_hashing_total",
            "Password hashes and checks, by outcome: done, refused_queue_full, refused_waited_too_long.",
            ("outcome",),
            registry=registry,
        )
        self.logins = Counter(
            "users_logins_total",
            "Logins, by outcome: ok, wrong_password, throttled (the account is slowed down).",
            ("outcome",),
            registry=registry,
        )


# How much less CPU priority (Linux `nice`) the hashing threads take than the event loop's thread.
HASHING_NICENESS = 10


def _lower_priority() -> None:
    """Runs in each hashing thread as it starts: on Linux a thread has a priority of its own, so the
    event loop (every other route) gets the CPU first while logins saturate it."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICENESS)


class PasswordHasher:
    """argon2 hashing and verification (pwdlib), in threads of its own, at most `concurrency` at once.

    argon2 costs tens to hundreds of milliseconds of CPU and releases the GIL while it runs, so
    running more at once than there are cores only makes each slower. Callers beyond `concurrency`
    wait in a queue of at most `queue`; beyond that they are refused at once with 503
    `PASSWORD_HASHING_BUSY` and `Retry-After`, as is a caller that waited `queue_timeout` seconds
    without its turn (well before the gateway's timeout), so a login flood queues or is refused, and never takes
    threads, memory or database connections from the other routes. Callers hold no database
    connection while they wait or hash (`UserRepository.release`). The hashing threads run at a
    lower CPU priority than the event loop, so the other routes stay quick while logins use every core.
    """

    def __init__(self, concurrency: int, queue: int, queue_timeout: float, metrics: PasswordMetrics) -> None:
        self.concurrency = concurrency
        self.queue = queue
        self.queue_timeout = queue_timeout
        self.metrics = metrics
        self._slots = asyncio.Semaphore(concurrency)
        self._waiting = 0
        self._running = 0
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="argon2", initializer=_lower_priority)

    @property
    def waiting(self) -> int:
        """Callers waiting for their turn."""
        return self._waiting

    @property
    def running(self) -> int:
        """Hashes and checks under way."""
        return self._running

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, call, *args)

    def _busy(self) -> HashingBusy:
        return HashingBusy(
            "Too many password checks are under way; try again shortly.",
            headers=retry_in(1),
            extra={"concurrency": self.concurrency, "queue": self.queue},
        )

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        if self._slots.locked() and self._waiting >= self.queue:
            self.metrics.hashing.labels("refused_queue_full").inc()
            raise self._busy()
        self._waiting += 1
        try:
            async with asyncio.timeout(self.queue_timeout):
                await self._slots.acquire()
        except TimeoutError:
            self.metrics.hashing.labels("refused_waited_too_long").inc()
            raise self._busy() from None
        finally:
            self._waiting -= 1
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1
            self._slots.release()
            self.metrics.hashing.labels("done").inc()

    async def hash(self, password: str) -> str:
        async with self._slot():
            return await self._run(_hasher.hash, password)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """False for a wrong password, and for no hash at all (an unknown email), which takes as long."""
        async with self._slot():
            ok = await self._run(_hasher.verify, password, password_hash or _DUMMY_HASH)
        return ok and password_hash is not None


@dataclass(frozen=True, slots=True)
class LoginThrottle:
    """Per account: `free` consecutive wrong passwords cost nothing; after each further one the next
    attempt waits 1 s, 2 s, 4 s, ... up to `max_delay_seconds`. An attempt counts as wrong from before
    its password is checked until it proves good (`service.issue_token`); a good password resets it.
    Nothing ever locks the owner out for longer than `max_delay_seconds` after the last wrong attempt."""

    free: int
    max_delay_seconds: int

    def blocked_until(self, failures: int, now: datetime) -> datetime | None:
        beyond = failures - self.free
        if beyond <= 0:
            return None
        return now + timedelta(seconds=min(self.max_delay_seconds, 2 ** min(beyond - 1, 30)))


class TokenIssuer:
    """Signs access tokens: HS256 with the settings' secret and kid, or RS256 with the key ring's
    current key (`signing.py`)."""

    def __init__(self, settings: UsersSettings, keys: KeyRing | None = None) -> None:
        self.algorithm = settings.jwt_algorithm
        self.kid = settings.jwt_kid
        self.issuer = settings.jwt_issuer
        self.ttl = settings.access_token_ttl_seconds
        self.keys = keys
        if self.algorithm == "RS256" and keys is None:
            raise ValueError("RS256 tokens are signed with the key ring's keys")
        secret = settings.jwt_secret
        self._secret = secret.get_secret_value() if secret is not None else None

    def issue(
        self,
        *,
        subject: str,
        tenant_id: str,
        scopes: frozenset[str],
        plan: str,
        role: str,
        quota: int | None = None,
    ) -> str:
        now = int(time.time())
        identity = Identity(subject=subject, tenant_id=tenant_id, scopes=scopes, plan=plan, role=role, quota=quota)
        claims: dict[str, Any] = {**identity_claims(identity), "iss": self.issuer, "iat": now, "exp": now + self.ttl}
        if self.keys is not None:
            key = self.keys.signing_key(utcnow())
            return jwt.encode(claims, key.private_pem, algorithm="RS256", headers={"kid": key.kid})
        assert self._secret is not None  # guaranteed by the settings validator
        return jwt.encode(claims, self._secret, algorithm=self.algorithm, headers={"kid": self.kid})

    def jwks(self) -> dict[str, Any]:
        """The public keys verifiers may meet in tokens (none with HS256: its secret is not public)."""
        return {"keys": self.keys.published(utcnow()) if self.keys is not None else []}


@dataclass(frozen=True, slots=True)
class UsersContext:
    """What the users service adds to the common service state (built in its lifespan, `app.py`)."""

    issuer: TokenIssuer
    hasher: PasswordHasher
    throttle: LoginThrottle
    metrics: PasswordMetrics
