"""A user's credit limit: its bound, and the error an order that would pass it answers."""

from __future__ import annotations

from typing import Self

from shared.errors import ValidationFailed

# A user's credit limit: what their open (not cancelled) orders may add up to. Far inside a 64-bit sum.
MAX_CREDIT_LIMIT_CENTS = 10**15


class CreditLimitExceeded(ValidationFailed, code="CREDIT_LIMIT_EXCEEDED", title="Credit limit exceeded"):
    """The user's open orders and this one would pass their credit limit: `credit_limit_cents`,
    `open_cents` and `total_cents` in the body."""

    @classmethod
    def of(cls, limit: int, open_cents: int, total_cents: int) -> Self:
        """An order of `total_cents` refused for a user whose open orders add up to `open_cents`, with
        a credit limit of `limit`: the one message and body the orders service and the gateway give."""
        return cls(
            f"This order of {total_cents} cents and the user's open orders of {open_cents} cents would exceed "
            f"the credit limit of {limit} cents.",
            extra={"credit_limit_cents": limit, "open_cents": open_cents, "total_cents": total_cents},
        )
