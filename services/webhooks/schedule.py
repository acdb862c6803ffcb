"""When a failed delivery is tried again, and when it is given up (the dead letter)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Literal

# Each delay is moved by up to this fraction either way, so deliveries that failed together (a
# receiver's outage) do not all come back in the same second.
JITTER = 0.1
# Receivers that ask for a pause: 429 Too Many Requests and 503 Service Unavailable.
RETRY_AFTER_STATUSES = frozenset({429, 503})
GONE = 410

Outcome = Literal["succeeded", "failed_attempt", "dead_lettered", "cancelled"]


@dataclass(frozen=True, slots=True)
class Decision:
    status: Literal["pending", "succeeded", "failed", "cancelled"]
    next_attempt_at: datetime | None
    outcome: Outcome


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date); None when absent or unreadable.

    The value is whatever a receiver sent, so nothing in it may raise: an exception here would leave
    the attempt unrecorded, and the delivery would be attempted again each time its lease lapsed,
    never counting an attempt.
    """
    if not value:
        return None
    value = value.strip()
    # delta-seconds is ASCII digits only (RFC 9110): `isdigit` alone also passes "²" or "١٢".
    # Too many digits for a float is infinity, which `next_delay` caps like any long pause.
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        # OverflowError: a year, day, hour or offset too large for a datetime ("01 Jan 99999999999").
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


def next_delay(
    schedule: Sequence[float], attempts_made: int, retry_after: float | None, rng: random.Random | None = None
) -> float | None:
    """The delay before the next attempt after `attempts_made` attempts of this round have failed,
    or None when that was the last one.

    A receiver's `Retry-After` replaces the scheduled delay, but never beyond the longest delay of
    the schedule (a receiver cannot park a delivery for a year) and never below a second.
    """
    if attempts_made > len(schedule):
        return None
    if retry_after is not None:
        return min(max(retry_after, 1.0), max(schedule))
    delay = schedule[attempts_made - 1]
    return delay * (rng or random).uniform(1 - JITTER, 1 + JITTER)


def decide(
    status_code: int | None,
    retry_after: str | None,
    attempts_made: int,
    schedule: Sequence[float],
    now: datetime,
    rng: random.Random | None = None,
) -> Decision:
    """What an attempt's answer means for its delivery. `attempts_made` counts this attempt."""
    if status_code is not None and 200 <= status_code < 300:
        return Decision("succeeded", None, "succeeded")
    if status_code == GONE:
        # The receiver says the endpoint is gone for good: it is disabled, nothing more is sent.
        return Decision("cancelled", None, "cancelled")
    asked = parse_retry_after(retry_after, now) if status_code in RETRY_AFTER_STATUSES else None
    delay = next_delay(schedule, attempts_made, asked, rng)
    if delay is None:
        return Decision("failed", None, "dead_lettered")
    return Decision("pending", now + timedelta(seconds=delay), "failed_attempt")
