"""Where the gateway finds the key of an access token, by the token's `kid`.

- `StaticKey`: one key from the settings (the HS256 secret, or an RS256 public key in
  `GATEWAY_JWT_PUBLIC_KEY`) under `GATEWAY_JWT_KID`.
- `JwksKeys`: RS256 without a configured public key: the users service's JWKS
  (`/.well-known/jwks.json`), cached in-process. An unknown `kid` fetches it again, at most once per
  `GATEWAY_JWKS_REFRESH_SECONDS` (concurrent askers share one fetch), so tokens with made-up `kid`s
  cost one fetch per interval at most; it is also fetched again once it is
  `GATEWAY_JWKS_MAX_AGE_SECONDS` old, so retired keys go away. The users service publishes a new key
  before it signs with it (`USERS_JWT_KEY_ACTIVATION_SECONDS`, longer than the refresh interval), so
  a rotation fails no request; the old key stays published until its tokens have expired. A fetch
  that fails keeps the keys already known.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from shared.contract import ANONYMOUS, JWKS_PATH
from shared.errors import PorticoError
from shared.http import ServiceClient

logger = logging.getLogger("portico.gateway.jwks")


class KeySource(Protocol):
    async def key(self, kid: str) -> Any | None:
        """The key material of `kid` (a secret, a PEM or a JWK), or None when it is unknown."""


class StaticKey:
    def __init__(self, kid: str, key: str) -> None:
        self.kid = kid
        self._key = key

    async def key(self, kid: str) -> Any | None:
        return self._key if kid == self.kid else None


class JwksKeys:
    def __init__(self, users: ServiceClient, *, algorithm: str, refresh_seconds: float, max_age_seconds: float) -> None:
        self.users = users
        self.algorithm = algorithm
        self.refresh_seconds = refresh_seconds
        self.max_age_seconds = max_age_seconds
        self.keys: dict[str, dict[str, Any]] = {}
        self._fetched_at = -float("inf")  # monotonic; when the last fetch started
        self._fetching: asyncio.Task[None] | None = None

    async def key(self, kid: str) -> Any | None:
        found = self.keys.get(kid)
        since = time.monotonic() - self._fetched_at
        if (found is None and since >= self.refresh_seconds) or since >= self.max_age_seconds:
            await self.refresh()
            found = self.keys.get(kid)
        return found

    async def refresh(self) -> None:
        """Fetches the JWKS again; concurrent callers share one fetch."""
        if self._fetching is None:
            self._fetched_at = time.monotonic()
            self._fetching = asyncio.create_task(self._fetch())
            self._fetching.add_done_callback(self._done)
        await asyncio.shield(self._fetching)

    def _done(self, _: asyncio.Task[None]) -> None:
        self._fetching = None

    async def _fetch(self) -> None:
        try:
            response = await self.users.send("GET", JWKS_PATH, identity=ANONYMOUS)
            if response.status_code != 200:
                raise ValueError(f"the users service answered {response.status_code}")
            keys = {
                str(item["kid"]): item
                for item in response.json()["keys"]
                if isinstance(item, dict) and item.get("kid") and item.get("alg", self.algorithm) == self.algorithm
            }
        except (PorticoError, ValueError, KeyError, TypeError) as exc:
            logger.warning("could not fetch the JWKS, keeping the %d keys known: %s", len(self.keys), exc)
            return
        self.keys = keys
