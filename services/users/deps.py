"""Every dependency a users route can ask for: the request's repositories, the lifespan's token
issuer and settings, and who may call what."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from services.users.errors import UserRequired
from services.users.repository import ApiKeyRepository, UserRepository
from services.users.security import LoginThrottle, PasswordHasher, TokenIssuer, UsersContext
from services.users.settings import UsersSettings
from shared.caller import Authorize, TenantIdentityDep
from shared.contract import USERS_READ, USERS_WRITE, TenantIdentity, key_id_of
from shared.db import on_session
from shared.state import ServiceState, StateDependencies

# What the users service adds to the common state: the token issuer, the hasher, the login throttle.
state = StateDependencies[ServiceState[UsersSettings, UsersContext]]()


SettingsDep = Annotated[UsersSettings, Depends(state.provide(lambda s: s.settings))]
IssuerDep = Annotated[TokenIssuer, Depends(state.provide(lambda s: s.context.issuer))]
HasherDep = Annotated[PasswordHasher, Depends(state.provide(lambda s: s.context.hasher))]
ThrottleDep = Annotated[LoginThrottle, Depends(state.provide(lambda s: s.context.throttle))]
UsersDep = Annotated[UserRepository, Depends(on_session(UserRepository))]
KeysDep = Annotated[ApiKeyRepository, Depends(on_session(ApiKeyRepository))]


async def require_user(identity: TenantIdentityDep) -> TenantIdentity:
    """Keys are managed by people: a key that could mint keys would outlive its own revocation."""
    if key_id_of(identity.subject) is not None:
        raise UserRequired("API keys are managed with a user's access token, not with an API key.")
    return identity


TenantCaller = TenantIdentityDep
# Callers with users:write: an admin's token, or a key holding it. What they may create is the
# authority rule's to say (`authority.py`).
UsersWrite = Annotated[TenantIdentity, Depends(Authorize(USERS_WRITE))]
UsersRead = Annotated[TenantIdentity, Depends(Authorize(USERS_READ))]
KeyManager = Annotated[TenantIdentity, Depends(require_user)]
