"""Password hashing (argon2 through pwdlib) and access-token issuing."""

from __future__ import annotations

import time
from typing import Any

from jose import jwt
from pwdlib import PasswordHash
from starlette.concurrency import run_in_threadpool

from services.users.settings import UsersSettings
from shared.contract import Identity, identity_claims

_hasher = PasswordHash.recommended()
# Verified against when the email is unknown, so a login takes as long whether or not it exists.
_DUMMY_HASH = _hasher.hash("portico-timing-equaliser")


async def hash_password(password: str) -> str:
    # argon2 costs tens of milliseconds of CPU: off the event loop.
    return await run_in_threadpool(_hasher.hash, password)


async def verify_password(password: str, password_hash: str | None) -> bool:
    return await run_in_threadpool(_hasher.verify, password, password_hash or _DUMMY_HASH) and password_hash is not None


class TokenIssuer:
    def __init__(self, settings: UsersSettings) -> None:
        self.algorithm = settings.jwt_algorithm
        self.kid = settings.jwt_kid
        self.issuer = settings.jwt_issuer
        self.ttl = settings.access_token_ttl_seconds
        key = settings.jwt_private_key if self.algorithm == "RS256" else settings.jwt_secret
        assert key is not None  # guaranteed by the settings validator
        self._key = key.get_secret_value()

    def issue(self, *, subject: str, tenant_id: str, scopes: frozenset[str], plan: str, role: str) -> str:
        now = int(time.time())
        identity = Identity(subject=subject, tenant_id=tenant_id, scopes=scopes, plan=plan, role=role)
        claims: dict[str, Any] = {**identity_claims(identity), "iss": self.issuer, "iat": now, "exp": now + self.ttl}
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers={"kid": self.kid})
