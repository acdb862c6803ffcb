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
from shared.contract import TenantIdentity, key_id_of
from shared.db import SessionDep
from shared.state import ServiceState, StateDependencies

# What the users service adds to the common state: the token issuer, the hasher, the login throttle.
state = StateDependencies[ServiceState[UsersSettings, UsersContext]]()


async def get_users(session: SessionDep) -> UserRepository:
    return UserRepository(session)


async def get_keys(session: SessionDep) -> ApiKeyRepository:
    return ApiKeyRepository(session)


SettingsDep = Annotated[UsersSettings, Depends(state.provide(lambda s: s.settings))]
IssuerDep = Annotated[TokenIssuer, Depends(state.provide(lambda s: s.context.issuer))]
HasherDep = Annotated[PasswordHasher, Depends(state.provide(lambda s: s.context.hasher))]
ThrottleDep = Annotated[LoginThrottle, Depends(state.provide(lambda s: s.context.throttle))]
UsersDep = Annotated[UserRepository, Depends(get_users)]
KeysDep = Annotated[ApiKeyRepository, Depends(get_keys)]


async def require_user(identity: TenantIdentityDep) -> TenantIdentity:
    """Keys are managed by people: a key that could mint keys would outlive its own revocation."""
    if key_id_of(identity.subject) is not None:
        raise UserRequired("API keys are managed with a user's access token, not with an API key.")
    return identity


TenantCaller = TenantIdentityDep
# Callers with users:write: an admin's token, or a key holding it. What they may create is the
# authority rule's to say (`authority.py`).
UsersWrite = Annotated[TenantIdentity, Depends(Authorize("users:write"))]
UsersRead = Annotated[TenantIdentity, Depends(Authorize("users:read"))]
KeyManager = Annotated[TenantIdentity, Depends(require_user)]
