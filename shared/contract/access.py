"""Scopes, what each role holds, and the plans."""

from __future__ import annotations

from typing import Literal, get_args

USERS_READ = "users:read"
USERS_WRITE = "users:write"
PRODUCTS_READ = "products:read"
PRODUCTS_WRITE = "products:write"
ORDERS_READ = "orders:read"
ORDERS_WRITE = "orders:write"
WEBHOOKS_READ = "webhooks:read"
WEBHOOKS_WRITE = "webhooks:write"
# The tenant's own use (`GET /v1/usage`): an admin's, never a member's.
USAGE_READ = "usage:read"
# Every API scope: what an API key may be given; an admin's token holds them all.
ALL_SCOPES: frozenset[str] = frozenset(
    {
        USERS_READ,
        USERS_WRITE,
        PRODUCTS_READ,
        PRODUCTS_WRITE,
        ORDERS_READ,
        ORDERS_WRITE,
        WEBHOOKS_READ,
        WEBHOOKS_WRITE,
        USAGE_READ,
    }
)
# Held only by Portico's own services acting on their own (the webhooks relay reads the order events).
EVENTS_READ = "events:read"
# Held only by the gateway: it adds its own events (`quota.threshold_reached`) to the orders feed.
EVENTS_WRITE = "events:write"

Role = Literal["admin", "member"]
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "admin": ALL_SCOPES,
    "member": frozenset({s for s in ALL_SCOPES if s.endswith(":read") and s != USAGE_READ} | {ORDERS_WRITE}),
}

# The plans, lowest first (the order admission ranks them in).
Plan = Literal["free", "pro", "enterprise"]
PLANS: tuple[Plan, ...] = get_args(Plan)
# What a caller whose plan is unknown is treated as.
DEFAULT_PLAN: Plan = "free"
