"""Who may call a route: `Access`, what a forwarded route's row says of its callers and what the
routes FastAPI runs ask for through `gateway/deps.py`, checked the same way everywhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.edge.credentials import API_KEY_CHALLENGE
from shared.contract import ALL_SCOPES, PLANS, AuthenticationRequired, Identity, Plan
from shared.errors import PaymentRequired

# What a route takes, as the reference says it: nothing (sign-up, login), a token or an API key, or a
# user's token only.
Credentials = Literal["none", "any", "token"]
BEARER_CHALLENGE = 'Bearer realm="portico"'
CHALLENGES = f"{BEARER_CHALLENGE}, {API_KEY_CHALLENGE}"


@dataclass(frozen=True, slots=True)
class Access:
    """Who may call a route, checked in this order: credentials (401), plan (402), scope (403).

    `anonymous`: the route is for callers without credentials (sign-up, login). It is sent to the
    service as nobody and credentials sent anyway are not looked at: the caller is its client address
    (for the authentication-failure limit and the rate limits). `api_key`: whether an API key may call
    it, as the reference says (keys are managed with a user's token; the users service refuses a key).
    """

    anonymous: bool = False
    scope: str | None = None
    plans: tuple[Plan, ...] = ()
    # The feature the plans unlock, named in the 402.
    feature: str = ""
    api_key: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.plans) - set(PLANS)
        if unknown:
            raise ValueError(f"unknown plans {sorted(unknown)}")
        if self.scope is not None and self.scope not in ALL_SCOPES:
            raise ValueError(f"unknown scope {self.scope!r}")

    @property
    def credentials(self) -> Credentials:
        """What the reference says the route takes."""
        return "none" if self.anonymous else "any" if self.api_key else "token"

    def check(self, identity: Identity) -> None:
        """Raises 401 for a route that needs a caller and has none, 402 for a plan that does not
        unlock it, 403 for a missing scope."""
        if self.anonymous:
            return
        if identity.is_anonymous:
            # Every scheme the route takes, one challenge each (RFC 9110 section 11.6.1).
            challenge = CHALLENGES if self.api_key else BEARER_CHALLENGE
            raise AuthenticationRequired("This route needs credentials.", challenge=challenge)
        if self.plans and identity.plan not in self.plans:
            plans = tuple(plan for plan in PLANS if plan in self.plans)
            raise PaymentRequired(
                f"{self.feature} needs the {' or '.join(plans)} plan; this tenant is on {identity.plan}.",
                extra={"required_plans": list(plans), "current_plan": identity.plan},
            )
        if self.scope is not None:
            identity.require_scope(self.scope)


ANONYMOUS_ACCESS = Access(anonymous=True)
# Any caller with credentials, whatever its scopes.
PRINCIPAL = Access()
# A user's token only (never an API key), whatever its scopes.
USER_TOKEN = Access(api_key=False)
