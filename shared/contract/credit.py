"""A user's credit limit: its bound, and the error an order that would pass it answers."""

from __future__ import annotations

from shared.errors import ValidationFailed

# A user's credit limit: what their open (not cancelled) orders may add up to. Far inside a 64-bit sum.
MAX_CREDIT_LIMIT_CENTS = 10**15


class CreditLimitExceeded(ValidationFailed, code="CREDIT_LIMIT_EXCEEDED", title="Credit limit exceeded"):
    """The user's open orders and this one would pass their credit limit: `credit_limit_cents`,
    `open_cents` and `total_cents` in the body."""
