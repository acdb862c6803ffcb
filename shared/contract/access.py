"""Scopes, what each role holds, and the plans."""

from __future__ import annotations

from typing import Literal, get_args

ALL_SCOPES: frozenset[str] = frozenset(
    {
        "users:read",
        "users:write",
        "products:read",
        "products:write",
        "orders:read",
        "orders:write",
        "webhooks:read",
        "webhooks:write",
    }
)
# Held only by Portico's own services acting on their own (the webhooks relay reads the order events).
EVENTS_READ = "events:read"

Role = Literal["admin", "member"]
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "admin": ALL_SCOPES,
    "member": frozenset({s for s in ALL_SCOPES if s.endswith(":read")} | {"orders:write"}),
}

Plan = Literal["free", "pro", "enterprise"]
PLANS: tuple[Plan, ...] = get_args(Plan)
# What a caller whose plan is unknown is treated as.
DEFAULT_PLAN: Plan = "free"
