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
        "usage:read",
    }
)
# Held only by Portico's own services acting on their own (the webhooks relay reads the order events).
EVENTS_READ = "events:read"
# Held only by the gateway: it adds its own events (`quota.threshold_reached`) to the orders feed.
EVENTS_WRITE = "events:write"
# The tenant's own use (`GET /v1/usage`): an admin's, never a member's.
USAGE_READ = "usage:read"

Role = Literal["admin", "member"]
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "admin": ALL_SCOPES,
    "member": frozenset({s for s in ALL_SCOPES if s.endswith(":read") and s != USAGE_READ} | {"orders:write"}),
}

Plan = Literal["free", "pro", "enterprise"]
PLANS: tuple[Plan, ...] = get_args(Plan)
# What a caller whose plan is unknown is treated as.
DEFAULT_PLAN: Plan = "free"
