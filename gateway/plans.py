"""Plan gates: features some plans do not include answer 402 naming the plans that would."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from gateway.auth import require_principal
from shared.contract import PLANS, Identity
from shared.errors import PaymentRequired


class RequirePlan:
    """Route dependency: the caller's tenant must be on one of `plans`."""

    def __init__(self, *plans: str, feature: str) -> None:
        unknown = set(plans) - set(PLANS)
        if unknown:
            raise ValueError(f"unknown plans {sorted(unknown)}")
        self.plans = tuple(p for p in PLANS if p in plans)
        self.feature = feature

    async def __call__(self, identity: Annotated[Identity, Depends(require_principal)]) -> Identity:
        if identity.plan not in self.plans:
            raise PaymentRequired(
                f"{self.feature} needs the {' or '.join(self.plans)} plan; this tenant is on {identity.plan}.",
                extra={"required_plans": list(self.plans), "current_plan": identity.plan},
            )
        return identity
