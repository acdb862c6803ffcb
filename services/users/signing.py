"""The keys access tokens are signed with (RS256), rotated without downtime, and published as a JWKS.

Keys live in the users database (`signing_keys`), so every instance of the service signs with the
same one and publishes the same set. Each instance keeps them in memory and reads them again every
`USERS_JWT_KEY_REFRESH_SECONDS`; the instance that finds the newest key older than
`USERS_JWT_KEY_ROTATION_SECONDS` (or none at all) makes the next generation (generations are unique:
two instances rotating at once make one key). A new key is published at once but signs only once it
is `USERS_JWT_KEY_ACTIVATION_SECONDS` old, so every verifier can know it before the first token it
signed arrives. A key stays published until every token it signed has expired (its successor's
activation + the token lifetime + a minute of clock skew). At the first start, `USERS_JWT_PRIVATE_KEY`
(with `USERS_JWT_KID`) becomes the first key when given; otherwise one is generated.

With HS256 there is nothing to publish (the secret is symmetric): the JWKS is empty and the secret
and kid come from the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.concurrency import run_in_threadpool

from services.users.errors import NoSigningKey
from services.users.models import SigningKey
from services.users.repository import SigningKeyRepository
from services.users.settings import UsersSettings
from shared.db import utcnow
from shared.errors import retry_in

logger = logging.getLogger("portico.users.signing")

ALGORITHM = "RS256"
# Clock skew between the users service and the verifiers that a published key's life allows for.
SKEW = timedelta(seconds=60)
# More generations than are ever published at once.
LOADED = 20


@dataclass(frozen=True, slots=True)
class Key:
    kid: str
    generation: int
    created_at: datetime
    private_pem: str
    public_jwk: dict[str, Any]


def _generate_pem() -> str:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _public_jwk(kid: str, private_pem: str) -> dict[str, Any]:
    return {**jwk.construct(private_pem, ALGORITHM).public_key().to_dict(), "kid": kid, "use": "sig"}


class KeyRing:
    def __init__(self, settings: UsersSettings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.rotation = timedelta(seconds=settings.jwt_key_rotation_seconds)
        self.activation = timedelta(seconds=settings.jwt_key_activation_seconds)
        self.token_life = timedelta(seconds=settings.access_token_ttl_seconds)
        self.keys: list[Key] = []  # newest first

    async def refresh(self) -> None:
        """Reads the keys again, making the next generation when the newest is due for rotation."""
        async with self.sessionmaker() as session:
            repo = SigningKeyRepository(session)
            async with session.begin():
                rows = await repo.newest(LOADED)
            if not rows or rows[0].created_at <= utcnow() - self.rotation:
                # Made with no connection held (RSA key generation takes a while).
                key = await self._next(rows[0].generation + 1 if rows else 1)
                async with session.begin():
                    await repo.insert_if_absent(key)
                    rows = await repo.newest(LOADED)
        known = {key.kid: key for key in self.keys}
        self.keys = [
            known.get(row.kid)
            or Key(row.kid, row.generation, row.created_at, row.private_pem, _public_jwk(row.kid, row.private_pem))
            for row in rows
        ]

    async def _next(self, generation: int) -> SigningKey:
        seed = self.settings.jwt_private_key
        if generation == 1 and seed is not None:
            return SigningKey(kid=self.settings.jwt_kid, generation=1, private_pem=seed.get_secret_value())
        pem = await run_in_threadpool(_generate_pem)
        logger.info("made signing key generation %d", generation)
        return SigningKey(kid=f"k{generation}-{secrets.token_hex(4)}", generation=generation, private_pem=pem)

    def signing_key(self, now: datetime) -> Key:
        """The newest key old enough to sign; the oldest loaded while none is (a first start)."""
        for key in self.keys:
            if key.created_at <= now - self.activation:
                return key
        if not self.keys:
            raise NoSigningKey("No signing key is loaded yet; try again shortly.", headers=retry_in(1))
        return self.keys[-1]

    def published(self, now: datetime) -> list[dict[str, Any]]:
        """The public keys of every key that signs, will sign, or signed a token that may not have expired."""
        out: list[dict[str, Any]] = []
        successor: Key | None = None
        for key in self.keys:
            if successor is None or now < successor.created_at + self.activation + self.token_life + SKEW:
                out.append(key.public_jwk)
            successor = key
        return out

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[KeyRing]:
        """Loads the keys, and reads them again in the background every refresh interval."""
        try:
            await self.refresh()
        except Exception:  # the database may not be up yet; the loop tries again
            logger.exception("could not load the signing keys; trying again")
        task = asyncio.create_task(self._loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.jwt_key_refresh_seconds)
            try:
                await self.refresh()
            except Exception:
                logger.exception("could not refresh the signing keys")
