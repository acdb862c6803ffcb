"""API scopes and what each role gets."""

from __future__ import annotations

from typing import Literal

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

Role = Literal["admin", "member"]
Plan = Literal["free", "pro", "enterprise"]
PLANS: tuple[str, ...] = ("free", "pro", "enterprise")

ROLE_SCOPES: dict[str, frozenset[str]] = {
    "admin": ALL_SCOPES,
    "member": frozenset({s for s in ALL_SCOPES if s.endswith(":read")} | {"orders:write"}),
}
