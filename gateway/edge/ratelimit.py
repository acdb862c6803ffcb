"""Rate limiting: one atomic check per request against every policy that applies to it.

Algorithm: a sliding-window counter. Each (caller, policy) keeps the count of the current window and
of the previous one; the estimate of the last `window` seconds is

    previous * (time left in the current window / window) + current

and a request is admitted while estimate + 1 <= limit. Windows are anchored at the caller's first
request, not at the clock, so a new caller's first burst is never split by a window edge that the
clock happened to put in its middle.

Error bound: inside one window the count is exact (no more than `limit` are ever admitted in a
window). Across an edge the previous window's requests are assumed spread evenly; when they in fact
came at its very end, a trailing span of `window` seconds can hold up to `limit * (1 + t/window)`
requests, t being how far the current window has run (under 2x in the worst case, typically a
fraction of a percent). The other way round, when they came at its start, it refuses early by at most
the same amount.

When Redis fails, the `local` failure mode (the default) counts in this process until it answers
again (`RateLimiter`). Every policy of a request is checked and counted in one Lua script (EVALSHA,
loaded once), so any number of gateway instances share the counts exactly; the scripts of concurrent
requests travel to Redis together in one pipeline (`ScriptBatcher`), each still atomic on its own. A
keyed write's idempotency claim runs in the same script as its count (`gateway/edge/idempotency.py`).
Keys carry the caller in a hash tag (`{t:<tenant>}` or `{a:<address>}`), so on Redis Cluster all of
one caller's keys live in one slot and the multi-key script stays legal. The time is Redis's own
(`TIME`), so gateway clocks do not matter.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from starlette.types import Scope

from gateway.edge.addresses import ClientAddress
from gateway.edge.metrics import EdgeMetrics
from gateway.edge.periods import Month, current_month, rfc3339
from gateway.edge.store import Script, ScriptBatcher, StoreCaller, StoreUnavailable
from gateway.settings import GatewaySettings, Quota
from shared.contract import DEFAULT_PLAN, Identity
from shared.errors import PorticoError, QuotaExceeded, TooManyRequests, retry_in

T = TypeVar("T")
Refusal = TypeVar("Refusal", bound=TooManyRequests)
# Whose counters a tenant's requests go to: `t:<tenant id>`, the hash tag of its keys (and of its usage
# hashes, `gateway/edge/metering.py`). An anonymous caller's are its client address's, `a:<address>`.
TENANT_SUBJECT_PREFIX = "t:"


def tenant_subject(tenant_id: str) -> str:
    return TENANT_SUBJECT_PREFIX + tenant_id


# The sliding windows of `n` policies, as a Lua function shared by the scripts that count requests:
# KEYS[1..n] are the policies' counters; from ARGV[base + 1]: the cost, then limit and window (ms) of
# each policy. Answers {admitted (1/0), then remaining, reset (ms) and retry-after (ms) per policy}.
#
# CALENDAR: a policy whose window is negative is a calendar period's counter (the monthly quota,
# `Policy.period`): its key names the period, -window is the time left in it (ms), and a limit of -1
# is no limit. It counts every admitted request until its key expires (a day after the period). Its
# 80% and 100% thresholds are each decided once per period, by the request that reaches them (`e80`,
# `e100` keep the count that did), and stay pending until the gateway has published their event
# (`s80`, `s100`). Its third answer is retry-after * 4 plus the pending thresholds (1: 80%, 2: 100%).
SLIDING_WINDOWS_FUNCTION = """
local function sliding_windows(n, base)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local cost = tonumber(ARGV[base + 1])
  local starts, prevs, curs, ests = {}, {}, {}, {}
  local admitted = 1
  for i = 1, n do
    local limit = tonumber(ARGV[base + 2 * i])
    local window = tonumber(ARGV[base + 2 * i + 1])
    if window < 0 then
      -- A calendar period's counter: see CALENDAR below.
      local v = redis.call('HMGET', KEYS[i], 'c', 'e80', 's80', 'e100', 's100')
      local c = tonumber(v[1]) or 0
      if limit >= 0 and c + cost > limit then admitted = 0 end
      starts[i], prevs[i], curs[i], ests[i] = 0, v, c, c
    else
    local v = redis.call('HMGET', KEYS[i], 's', 'p', 'c')
    local s, p, c = tonumber(v[1]), tonumber(v[2]) or 0, tonumber(v[3]) or 0
    if s == nil then
      s = now
      p = 0
      c = 0
    end
    local elapsed = now - s
    if elapsed >= window then
      local k = math.floor(elapsed / window)
      if k == 1 then p = c else p = 0 end
      c = 0
      s = s + k * window
      elapsed = now - s
    end
    local est = p * (window - elapsed) / window + c
    if est + cost > limit then admitted = 0 end
    starts[i], prevs[i], curs[i], ests[i] = s, p, c, est
    end
  end
  local out = {admitted}
  for i = 1, n do
    local limit = tonumber(ARGV[base + 2 * i])
    local window = tonumber(ARGV[base + 2 * i + 1])
    if window < 0 then
      local v, c = prevs[i], curs[i]
      local retry = 0
      if limit >= 0 and c + cost > limit then
        retry = -window
      elseif admitted == 1 then
        c = redis.call('HINCRBY', KEYS[i], 'c', cost)
        if c == cost then redis.call('PEXPIRE', KEYS[i], -window + 86400000) end
      end
      local flags = 0
      if limit >= 0 then
        if not v[2] and c >= math.ceil(limit * 0.8) then
          redis.call('HSET', KEYS[i], 'e80', c)
          v[2] = c
        end
        if not v[4] and c >= limit then
          redis.call('HSET', KEYS[i], 'e100', c)
          v[4] = c
        end
        if v[2] and not v[3] then flags = flags + 1 end
        if v[4] and not v[5] then flags = flags + 2 end
      end
      local remaining = 0
      if limit >= 0 then remaining = math.max(0, limit - c) end
      out[#out + 1] = remaining
      out[#out + 1] = -window
      out[#out + 1] = retry * 4 + flags
    else
    local s, p, c, est = starts[i], prevs[i], curs[i], ests[i]
    local elapsed = now - s
    local retry = 0
    if est + cost > limit then
      if c + cost <= limit then
        retry = (window - elapsed) - (limit - c - cost) * window / p
      else
        retry = (window - elapsed) + window - (limit - cost) * window / c
      end
      if retry < 1 then retry = 1 end
    elseif admitted == 1 then
      c = c + cost
      est = est + cost
      redis.call('HSET', KEYS[i], 's', s, 'p', p, 'c', c)
      redis.call('PEXPIRE', KEYS[i], 2 * window)
    end
    local remaining = math.floor(limit - est)
    if remaining < 0 then remaining = 0 end
    out[#out + 1] = remaining
    out[#out + 1] = window - elapsed
    out[#out + 1] = math.ceil(retry)
    end
  end
  return out
end
"""
# KEYS: one per policy. ARGV: cost, then limit and window (ms) per policy.
SLIDING_WINDOW = Script(SLIDING_WINDOWS_FUNCTION + "return sliding_windows(#KEYS, 0)")


def window_args(policies: Sequence[Policy], cost: int) -> list[int]:
    """The ARGV of `sliding_windows` for `policies`."""
    args = [cost]
    for policy in policies:
        if policy.period:
            args += [policy.quota.limit, -max(1, policy.period_end_ms - int(time.time() * 1000))]
        else:
            args += [policy.quota.limit, policy.quota.window_seconds * 1000]
    return args


@dataclass(frozen=True, slots=True)
class Policy:
    """A named quota. The name is what clients see in RateLimit-Policy.

    With a `period` (e.g. `2026-12`), a calendar period's counter instead of a sliding window: the
    monthly quota. It ends at `period_end_ms` (Unix ms); its quota's window is the period's length,
    and a limit of -1 is no limit (counted, never refused, not shown to clients)."""

    name: str
    quota: Quota
    period: str = ""
    period_end_ms: int = 0

    @property
    def key(self) -> str:
        base = self.name.replace(" ", ":")
        return f"{base}:{self.period}" if self.period else base

    @property
    def unlimited(self) -> bool:
        return self.quota.limit < 0


@dataclass(frozen=True, slots=True)
class PolicyState:
    policy: Policy
    remaining: int
    reset_ms: int
    retry_after_ms: int  # 0 unless this policy refused the request

    @property
    def reset_seconds(self) -> int:
        return max(0, math.ceil(self.reset_ms / 1000))


@dataclass(frozen=True, slots=True)
class Verdict:
    admitted: bool
    states: tuple[PolicyState, ...]
    # A calendar policy whose thresholds are decided but not yet published (bits: 1 80%, 2 100%).
    pending: tuple[tuple[Policy, int], ...] = ()

    @property
    def tightest(self) -> PolicyState:
        """The state a client should look at: a refusing policy, else the one with least left."""
        refusing = [s for s in self.states if s.retry_after_ms]
        if refusing:
            return max(refusing, key=lambda s: s.retry_after_ms)
        return min(self.states, key=lambda s: s.remaining)


class RateLimitStore(Protocol):
    async def hit(self, subject: str, policies: Sequence[Policy], cost: int = 1) -> Verdict:
        """Checks every policy for `subject` and counts the request in all of them, or in none."""


def verdict_of(policies: Sequence[Policy], raw: Sequence[int]) -> Verdict:
    """The verdict in the answer of `sliding_windows` (which may go on with more after it)."""
    states: list[PolicyState] = []
    pending: list[tuple[Policy, int]] = []
    for i, policy in enumerate(policies):
        remaining, reset, retry = int(raw[1 + 3 * i]), int(raw[2 + 3 * i]), int(raw[3 + 3 * i])
        if policy.period:
            retry, flags = divmod(retry, 4)
            if flags:
                pending.append((policy, flags))
            if policy.unlimited:
                continue
        states.append(PolicyState(policy, remaining, reset, retry))
    return Verdict(bool(raw[0]), tuple(states), tuple(pending))


class RedisRateLimitStore:
    def __init__(self, scripts: ScriptBatcher, prefix: str) -> None:
        self.prefix = prefix
        # Sent by digest (EVALSHA), with the calls of other requests of the same moment.
        self.scripts = scripts

    def key(self, subject: str, policy: Policy) -> str:
        return f"{self.prefix}rl:{{{subject}}}:{policy.key}"

    def keys(self, subject: str, policies: Sequence[Policy]) -> list[str]:
        return [self.key(subject, policy) for policy in policies]

    async def hit(self, subject: str, policies: Sequence[Policy], cost: int = 1) -> Verdict:
        raw = await self.scripts.call(SLIDING_WINDOW, self.keys(subject, policies), window_args(policies, cost))
        return verdict_of(policies, raw)


class MemoryRateLimitStore:
    """The same algorithm in-process, for a single gateway process without Redis.

    Atomic because nothing awaits between reading and writing a counter on the one event loop.
    """

    SWEEP_EVERY = 10_000

    def __init__(self) -> None:
        # (subject, policy key) -> [window start ms, previous count, current count, expires at ms]
        self._counters: dict[tuple[str, str], list[float]] = {}
        # (subject, calendar policy key) -> `period_state`
        self._periods: dict[tuple[str, str], list[float]] = {}
        self._hits = 0

    @staticmethod
    def now_ms() -> int:
        # One process, one clock: monotonic, so a wall-clock step cannot reopen or stretch a window.
        return time.monotonic_ns() // 1_000_000

    async def hit(self, subject: str, policies: Sequence[Policy], cost: int = 1) -> Verdict:
        now = self.now_ms()
        self._hits += 1
        if self._hits % self.SWEEP_EVERY == 0:
            self._sweep(now)
        rows: list[tuple[list[float], float]] = []
        admitted = True
        for policy in policies:
            if policy.period:
                period = self.period_state(subject, policy)
                if not policy.unlimited and period[0] + cost > policy.quota.limit:
                    admitted = False
                rows.append((period, period[0]))
                continue
            limit, window = policy.quota.limit, policy.quota.window_seconds * 1000
            state = self._counters.get((subject, policy.key))
            if state is None or state[3] <= now:
                state = [now, 0, 0, 0]
            start, prev, cur = state[0], state[1], state[2]
            elapsed = now - start
            if elapsed >= window:
                k = elapsed // window
                prev = cur if k == 1 else 0
                cur = 0
                start += k * window
                elapsed = now - start
            state[:3] = [start, prev, cur]
            est = prev * (window - elapsed) / window + cur
            if est + cost > limit:
                admitted = False
            rows.append((state, est))
        raw: list[int] = [int(admitted)]
        for policy, (state, est) in zip(policies, rows, strict=True):
            if policy.period:
                raw += self._count_period(state, policy, cost, admitted)
                continue
            limit, window = policy.quota.limit, policy.quota.window_seconds * 1000
            start, prev, cur = state[0], state[1], state[2]
            elapsed = now - start
            retry = 0.0
            if est + cost > limit:
                if cur + cost <= limit:
                    retry = (window - elapsed) - (limit - cur - cost) * window / prev
                else:
                    retry = (window - elapsed) + window - (limit - cost) * window / cur
                retry = max(retry, 1)
            elif admitted:
                state[2] = cur + cost
                state[3] = now + 2 * window
                est += cost
                self._counters[(subject, policy.key)] = state
            raw += [max(0, math.floor(limit - est)), int(window - elapsed), math.ceil(retry)]
        return verdict_of(policies, raw)

    def period_state(self, subject: str, policy: Policy) -> list[float]:
        """A calendar policy's [count, count at 80%, 80% published, count at 100%, 100% published,
        period end (Unix ms)] (0: not yet), as CALENDAR in the script keeps them."""
        key = (subject, policy.key)
        state = self._periods.get(key)
        if state is None:
            state = self._periods[key] = [0, 0, 0, 0, 0, policy.period_end_ms]
        return state

    @staticmethod
    def _count_period(state: list[float], policy: Policy, cost: int, admitted: bool) -> list[int]:
        limit = policy.quota.limit
        left = max(1, policy.period_end_ms - int(time.time() * 1000))
        retry = 0
        if limit >= 0 and state[0] + cost > limit:
            retry = left
        elif admitted:
            state[0] += cost
        flags = 0
        if limit >= 0:
            if not state[1] and state[0] >= math.ceil(limit * 0.8):
                state[1] = state[0]
            if not state[3] and state[0] >= limit:
                state[3] = state[0]
            flags = (1 if state[1] and not state[2] else 0) + (2 if state[3] and not state[4] else 0)
        return [max(0, int(limit - state[0])) if limit >= 0 else 0, left, retry * 4 + flags]

    def _sweep(self, now: int) -> None:
        for key in [k for k, v in self._counters.items() if v[3] <= now]:
            del self._counters[key]
        # A period's count is kept a day after it ends, as in Redis.
        wall = time.time() * 1000 - 86_400_000
        for key in [k for k, v in self._periods.items() if v[5] <= wall]:
            del self._periods[key]


@dataclass(eq=False, slots=True)
class RateLimiter:
    """A store, how to call it (deadline, failure mode), and, in the `local` failure mode, the
    in-process store that counts while the shared one fails. Built in the lifespan; any set of
    policies can have one of its own (a caller per stage, e.g. `StoreCaller("auth_failures", ...)`).

    `local`: when the shared store fails, this gateway process counts the same policies in memory
    (the same algorithm), so each instance keeps enforcing every quota on its own traffic. The shared
    store is tried again `retry_seconds` after the last failure, by one request at a time, so a hung
    Redis costs one request the timeout per interval rather than every request; the first answer
    ends the fallback and counting is shared again from what Redis holds.
    """

    store: RateLimitStore
    call: StoreCaller
    _: KW_ONLY
    retry_seconds: float = 1.0
    local: RateLimitStore | None = field(init=False)
    # While in the future, the local store counts without asking the shared one.
    _local_until: float = field(init=False, default=0.0)
    _probing: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.local = MemoryRateLimitStore() if self.call.mode == "local" else None

    async def hit(self, subject: str, policies: Sequence[Policy], cost: int = 1) -> Verdict:
        """Counts the request in the shared store, or in the local one while the shared one fails.
        Raises StoreUnavailable when the shared store failed and the mode is `open` or `closed`."""

        async def shared() -> tuple[Verdict, None]:
            return await self.store.hit(subject, policies, cost), None

        verdict, _ = await self.hit_with(subject, policies, shared, cost)
        return verdict

    async def hit_with(
        self,
        subject: str,
        policies: Sequence[Policy],
        shared: Callable[[], Awaitable[tuple[Verdict, T]]],
        cost: int = 1,
    ) -> tuple[Verdict, T | None]:
        """As `hit`, counting through `shared`: a call of the shared store that counts these policies
        and may do more in the same script (a keyed write's idempotency claim). While the shared store
        fails, the local count has no more to give: None."""
        if self.local is None:
            return await self.call(shared())
        if self._local_until and (self._probing or time.monotonic() < self._local_until):
            self.call.passed_by()
            return await self.local.hit(subject, policies, cost), None
        probing = self._probing = bool(self._local_until)
        try:
            outcome = await self.call(shared())
        except StoreUnavailable:
            self._local_until = time.monotonic() + self.retry_seconds
            return await self.local.hit(subject, policies, cost), None
        finally:
            if probing:
                self._probing = False
        self._local_until = 0.0
        return outcome


def _sf_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=1024)
def _policy_header(policies: tuple[Policy, ...]) -> bytes:
    # The same few policy combinations come back on every request: formatted once each.
    return ", ".join(f"{_sf_string(p.name)};q={p.quota.limit};w={p.quota.window_seconds}" for p in policies).encode()


def rate_limit_headers(verdict: Verdict) -> list[tuple[bytes, bytes]]:
    """RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-headers structured fields), and the
    X-RateLimit-* trio of the tightest policy. Reset values are seconds from now."""
    current = ", ".join(f"{_sf_string(s.policy.name)};r={s.remaining};t={_reset_for(s)}" for s in verdict.states)
    tightest = verdict.tightest
    return [
        (b"ratelimit-policy", _policy_header(tuple(s.policy for s in verdict.states))),
        (b"ratelimit", current.encode()),
        (b"x-ratelimit-limit", str(tightest.policy.quota.limit).encode()),
        (b"x-ratelimit-remaining", str(tightest.remaining).encode()),
        (b"x-ratelimit-reset", str(_reset_for(tightest)).encode()),
    ]


def _reset_for(state: PolicyState) -> int:
    # For a refusing policy, "reset" is when the next request would get through.
    if state.retry_after_ms:
        return math.ceil(state.retry_after_ms / 1000)
    return state.reset_seconds


MONTHLY = "monthly"
# The request span's attribute saying what the rate limit decided (or `fail_<mode>` while the store fails).
DECISION = "portico.rate_limit.decision"
# Routes a tenant past its monthly quota can still call, to see where it stands (still metered, and
# still under the plan's rate limit).
OUTSIDE_MONTHLY_QUOTA = frozenset({"/v1/usage"})


class MonthlyPolicies:
    """The monthly quota's policy of each limit, for the current calendar month (UTC): one object per
    limit and month, so the hot path looks one up and formats its header once."""

    MAX_LIMITS = 1024

    def __init__(self) -> None:
        self.month: Month = current_month()
        self._end = self.month.end.timestamp()
        self._policies: dict[int, Policy] = {}

    def policy(self, limit: int | None) -> Policy:
        """The policy of `limit` requests this month (None: no limit, counted only)."""
        if time.time() >= self._end:
            self.month = current_month()
            self._end = self.month.end.timestamp()
            self._policies = {}
        key = -1 if limit is None else limit
        policy = self._policies.get(key)
        if policy is None:
            if len(self._policies) >= self.MAX_LIMITS:
                self._policies = {}
            month = self.month
            policy = Policy(MONTHLY, Quota(key, month.seconds), period=month.label, period_end_ms=month.end_ms)
            self._policies[key] = policy
        return policy


class MonthlyQuotas:
    """Each tenant's monthly quota: its own (an operator's, carried by its credentials), else its
    plan's (`GATEWAY_QUOTA_*`; None: no limit)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.limits: dict[str, int | None] = dict(settings.monthly_quotas())
        self.default = self.limits[DEFAULT_PLAN]
        self.policies = MonthlyPolicies()

    def limit(self, identity: Identity) -> int | None:
        if identity.quota is not None:
            return identity.quota
        return self.limits.get(identity.plan or DEFAULT_PLAN, self.default)

    def policy(self, identity: Identity) -> Policy:
        return self.policies.policy(self.limit(identity))


class ThresholdAnnouncer(Protocol):
    def pending(self, subject: str, policy: Policy, flags: int) -> None:
        """A quota threshold of `subject` was decided and its event is not yet published."""


# Makes the shared store's call that counts these policies (and may do more in the same script).
SharedCount = Callable[[str, list[Policy]], Callable[[], Awaitable[tuple[Verdict, T]]]]


@dataclass(frozen=True, slots=True)
class Counted(Generic[T]):
    """What counting a request gave: its verdict (None when the path is exempt or the store failed),
    its refusal (429 when a quota is spent, the failure mode's 503 when the store failed closed), and
    what the shared call gave beside the verdict (None when there was none, or the local count)."""

    verdict: Verdict | None
    refusal: PorticoError | None
    outcome: T | None
    # False for an exempt path: nothing was asked of the store.
    counted: bool = True


NOT_COUNTED: Counted[Any] = Counted(None, None, None, counted=False)


class RateLimits:
    """The rate-limit stage: which quotas a request counts against, and what its answer says of them.

    A request counts against its caller's plan quota (per tenant) or, without a tenant, against the
    anonymous quota of its client address; and against its route's own quota when it has one (the
    route's row, `Forward.rate_limit`, or `GATEWAY_RATE_LIMIT_ROUTES`, which wins). Every answer carries
    the headers of the tightest policy; a spent quota is 429 with `Retry-After`.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        limiter: RateLimiter,
        metrics: EdgeMetrics,
        route_quotas: Mapping[tuple[str, str], Quota],
    ) -> None:
        self.limiter = limiter
        self.metrics = metrics
        self.exempt = frozenset(settings.rate_limit_exempt_paths)
        self.client_address = ClientAddress(settings.trusted_proxies)
        self.anonymous = Policy("anonymous", settings.rate_limit_anonymous)
        self.plans: dict[str | None, Policy] = {plan: Policy(plan, q) for plan, q in settings.plan_quotas().items()}
        self.default_plan = self.plans[DEFAULT_PLAN]
        self.routes = {route: Policy(f"{route[0]} {route[1]}", quota) for route, quota in route_quotas.items()}
        # The monthly quota, counted in the same script as the windows (`gateway/edge/metering.py`).
        self.monthly = MonthlyQuotas(settings)
        # Publishes the quota thresholds' events; set in the lifespan.
        self.announcer: ThresholdAnnouncer | None = None

    def policies(self, scope: Scope, identity: Identity, route: str | None) -> tuple[str, list[Policy]]:
        """Whose count (`subject`) and which policies a request of `route` (a template) counts against."""
        if identity.tenant_id is None:
            subject, policies = f"a:{self.client_address(scope)}", [self.anonymous]
        else:
            subject, policies = tenant_subject(identity.tenant_id), [self.plans.get(identity.plan, self.default_plan)]
        if route is not None and self.routes:
            # A WebSocket's scope has no method: its upgrade is a GET.
            policy = self.routes.get((scope.get("method", "GET"), route))
            if policy is not None:
                policies.append(policy)
        if identity.tenant_id is not None and route not in OUTSIDE_MONTHLY_QUOTA:
            policies.append(self.monthly.policy(identity))
        return subject, policies

    async def count(
        self,
        scope: Scope,
        identity: Identity,
        route: str | None,
        attributes: dict[str, Any],
        shared: SharedCount[T] | None = None,
    ) -> Counted[T]:
        """Counts a request, or a WebSocket connection (one request of its caller's quotas), against
        the quotas of `route` (a template): the one admission path of both. `shared` makes the shared
        store's call, for a keyed write that also claims its key in the same script.

        An exempt path is not counted. While the store fails, the failure mode decides: `closed`
        refuses (503), `open` lets it through uncounted, `local` counts in this process."""
        if scope["path"] in self.exempt:
            return NOT_COUNTED
        subject, policies = self.policies(scope, identity, route)
        try:
            if shared is None:
                verdict, outcome = await self.limiter.hit(subject, policies), None
            else:
                verdict, outcome = await self.limiter.hit_with(subject, policies, shared(subject, policies))
        except StoreUnavailable:
            attributes[DECISION] = f"fail_{self.limiter.call.mode}"
            return Counted(None, self.limiter.call.refusal(), None)
        return Counted(verdict, self.decided(verdict, attributes, subject), outcome)

    def decided(self, verdict: Verdict, attributes: dict[str, Any], subject: str = "") -> TooManyRequests | None:
        """Counts the decision and notes it for the request's span; the 429 when a quota is spent.
        Hands `subject`'s pending quota thresholds to the announcer."""
        if verdict.pending and self.announcer is not None:
            for policy, flags in verdict.pending:
                self.announcer.pending(subject, policy, flags)
        tightest = verdict.tightest
        decision = "admitted" if verdict.admitted else "refused"
        self.metrics.rate_limit.labels(tightest.policy.name, decision).inc()
        attributes[DECISION] = decision
        attributes["portico.rate_limit.policy"] = tightest.policy.name
        attributes["portico.rate_limit.remaining"] = tightest.remaining
        if verdict.admitted:
            return None
        retry_after = math.ceil(tightest.retry_after_ms / 1000)
        quota = tightest.policy.quota
        if tightest.policy.period:
            month = self.monthly.policies.month
            return quota_spent(
                QuotaExceeded,
                f"The monthly quota of {quota.limit} requests is spent; it starts again at "
                f"{rfc3339(month.end)}, in {retry_after} s.",
                retry_after,
                policy=tightest.policy.name,
                limit=quota.limit,
                period_start=rfc3339(month.start),
                period_end=rfc3339(month.end),
            )
        return quota_spent(
            TooManyRequests,
            f"The {tightest.policy.name} quota of {quota.limit} requests per {quota.window_seconds} s is "
            f"spent; retry in {retry_after} s.",
            retry_after,
            policy=tightest.policy.name,
            limit=quota.limit,
            window_seconds=quota.window_seconds,
        )


def quota_spent(error: type[Refusal], detail: str, retry_after: int, **facts: Any) -> Refusal:
    """The 429 of a spent quota: `Retry-After`, and the quota's `facts` then `retry_after` in the body."""
    return error(detail, headers=retry_in(retry_after), extra={**facts, "retry_after": retry_after})


def route_quotas(
    rows: Mapping[tuple[str, str], Quota], settings: GatewaySettings, routes: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Quota]:
    """The quota of each route that has one of its own: the rows', then the settings' (which win, and
    must name a route of the gateway, as `METHOD /template`)."""
    known = set(routes)
    quotas = dict(rows)
    for name, quota in settings.rate_limit_routes.items():
        method, _, path = name.partition(" ")
        if (method, path) not in known:
            raise ValueError(f"rate_limit_routes names {name!r}, which is not a route of the gateway")
        quotas[(method, path)] = quota
    return quotas
