"""Failed authentication, counted per client address in a limit of its own.

Every failure counts, whatever credential came with it: a JWT that does not verify, an API key that
is malformed, unknown, revoked or expired, a wrong password at login, an email already taken at
sign-up (the 409 that would otherwise let an address enumerate accounts). Past the limit (default 30
in a sliding 60 s, `GATEWAY_AUTH_FAILURE_LIMIT`) the address is answered 429 `TOO_MANY_AUTH_FAILURES`
with `Retry-After`:

- before any upstream call made to authenticate: an API key this process does not remember, a
  login, a sign-up; so a flood of guesses costs the users service nothing once the budget is spent;
- instead of the 401 of one more failure.

A caller whose credential verifies in-process (a valid JWT, a key this process remembers as valid)
is never held up here: an attacker behind the same address (a NAT, a proxy) cannot lock it out.

The counts are the rate limiter's sliding windows (`gateway/edge/ratelimit.py`), in Redis when it
is configured so every gateway instance shares them, and always with the `local` failure mode: while
Redis fails, each process counts alone. This limit never fails open.
"""

from __future__ import annotations

import math

from gateway.edge.metrics import EdgeMetrics
from gateway.edge.ratelimit import Policy, RateLimiter, quota_spent
from gateway.settings import Quota
from shared.errors import TooManyRequests


class TooManyAuthFailures(
    TooManyRequests, code="TOO_MANY_AUTH_FAILURES", title="Too many failed authentications", slug="quota-exceeded"
):
    """The client address spent its failed-authentication budget (`GATEWAY_AUTH_FAILURE_LIMIT`):
    `Retry-After`, before any upstream call."""


class AuthFailures:
    def __init__(self, limiter: RateLimiter, quota: Quota, metrics: EdgeMetrics) -> None:
        if limiter.local is None:
            raise ValueError("the authentication-failure limit must have the local fallback: it never fails open")
        self.limiter = limiter
        self.quota = quota
        self.metrics = metrics
        self.policy = Policy("auth_failures", quota)
        # The same counter (same name, same key), asked whether one more failure would fit without
        # counting one: with a cost of 0, "est + 0 > limit - 1" is "est + 1 > limit".
        self._would_fit = Policy("auth_failures", Quota(quota.limit - 1, quota.window_seconds))

    @staticmethod
    def subject(address: str) -> str:
        return f"a:{address}"

    async def check(self, address: str) -> None:
        """Raises TooManyAuthFailures when `address` has no failure left to spend."""
        verdict = await self.limiter.hit(self.subject(address), [self._would_fit], cost=0)
        if not verdict.admitted:
            self.metrics.auth_failures.labels("refused").inc()
            raise self._refusal(verdict.tightest.retry_after_ms)

    async def failed(self, address: str) -> TooManyAuthFailures | None:
        """Counts a failure of `address`; answers the 429 to send instead of the failure's own answer
        when its budget was already spent."""
        self.metrics.auth_failures.labels("failed").inc()
        verdict = await self.limiter.hit(self.subject(address), [self.policy])
        if verdict.admitted:
            return None
        self.metrics.auth_failures.labels("refused").inc()
        return self._refusal(verdict.tightest.retry_after_ms)

    def _refusal(self, retry_after_ms: int) -> TooManyAuthFailures:
        retry_after = max(1, math.ceil(retry_after_ms / 1000))
        return quota_spent(
            TooManyAuthFailures,
            f"Too many failed authentications from this address (at most {self.quota.limit} per "
            f"{self.quota.window_seconds} s); retry in {retry_after} s.",
            retry_after,
            policy=self.policy.name,
            limit=self.quota.limit,
            window_seconds=self.quota.window_seconds,
        )
