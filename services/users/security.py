"""Password hashing (argon2 through pwdlib) and access-token issuing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jose import jwt
from pwdlib import PasswordHash
from starlette.concurrency import run_in_threadpool

from services.users.settings import UsersSettings
from services.users.signing import KeyRing
from shared.contract import Identity, identity_claims
from shared.db import utcnow
from shared.errors import ServiceUnavailable

_hasher = PasswordHash.recommended()
# Verified against when the email is unknown, so a login takes as long whether or not it exists.
_DUMMY_HASH = _hasher.hash("portico-timing-equaliser")


class HashingBusy(ServiceUnavailable, code="PASSWORD_HASHING_BUSY", title="Service Unavailable"): ...


class PasswordHasher:
    """argon2 hashing and verification (pwdlib), in threads, at most `concurrency` at once.

    argon2 costs tens to hundreds of milliseconds of CPU and releases the GIL while it runs, so
    running more at once than there are cores only makes each slower. Callers beyond `concurrency`
    wait in a queue of at most `queue`; beyond that they are refused at once with 503
    `PASSWORD_HASHING_BUSY` and `Retry-After`, so a login flood queues or is refused, and never takes
    threads, memory or database connections from the other routes. Callers hold no database
    connection while they wait or hash (`UserRepository.release`).
    """

    def __init__(self, concurrency: int, queue: int) -> None:
        self.concurrency = concurrency
        self.queue = queue
        self._slots = asyncio.Semaphore(concurrency)
        self._waiting = 0

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        if self._slots.locked() and self._waiting >= self.queue:
            raise HashingBusy(
                "Too many password checks are under way; try again shortly.",
                headers={"Retry-After": "1"},
                extra={"concurrency": self.concurrency, "queue": self.queue},
            )
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()

    async def hash(self, password: str) -> str:
        async with self._slot():
            return await run_in_threadpool(_hasher.hash, password)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """False for a wrong password, and for no hash at all (an unknown email), which takes as long."""
        async with self._slot():
            ok = await run_in_threadpool(_hasher.verify, password, password_hash or _DUMMY_HASH)
        return ok and password_hash is not None


@dataclass(frozen=True, slots=True)
class LoginThrottle:
    """Per account: `free` consecutive wrong passwords cost nothing; after each further one the next
    attempt waits 1 s, 2 s, 4 s, ... up to `max_delay_seconds`. A good password resets it. Nothing
    ever locks the owner out for longer than `max_delay_seconds` after the last wrong attempt."""

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

    def issue(self, *, subject: str, tenant_id: str, scopes: frozenset[str], plan: str, role: str) -> str:
        now = int(time.time())
        identity = Identity(subject=subject, tenant_id=tenant_id, scopes=scopes, plan=plan, role=role)
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
