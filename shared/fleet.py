"""Fleets: the instances of one called service, and which of them each request goes to.

A service's URL setting names one instance, a fixed list, or a DNS name whose A and AAAA records are
the instances (`ServiceAddress`, `shared/settings.py`). `ServiceClient` (`shared/http.py`) asks its
`Fleet` for an instance per request:

- Balancing: two healthy instances drawn at random, the less loaded one taken (power of two choices:
  by requests in flight, or by in-flight requests times a peak-sensitive moving average of latency,
  `UPSTREAM_BALANCER`); a tie goes to the one chosen less recently, so a trickle of sequential
  requests spreads evenly too. The choice is O(1) whatever the fleet's size.
- Passive health: `UPSTREAM_EJECTION_FAILURES` consecutive failures of an instance (refused, reset,
  timed out, a 5xx of its own), or a stall (requests in flight and none answered for
  `UPSTREAM_STALL_SECONDS` while the rest of the fleet answers), take it out for a wait that doubles
  each time it is taken out again; never more than half of a fleet at once.
- Active checks: an instance that is out is checked on `/health/ready` once its wait is over, every
  `UPSTREAM_HEALTH_CHECK_INTERVAL_SECONDS`, and comes back when a check passes. Healthy instances
  are never probed: their requests say enough.
- Discovery: a DNS name is resolved again on its records' TTL (bounded by the DNS TTL settings). An
  instance that leaves gets no new request and finishes those in flight; a failed resolution, or an
  answer without records, keeps the last good set.
- A retry budget per service: retries may add at most `UPSTREAM_RETRY_BUDGET_RATIO` of the requests of
  the last `UPSTREAM_RETRY_BUDGET_WINDOW_SECONDS`, plus a small floor (Envoy's `retry_budget`).

A fleet of one fixed URL (the default) skips all of it: no DNS, no accounting, no task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

from shared.settings import Endpoint, ProcessSettings, ServiceAddress, name_server

if TYPE_CHECKING:
    import dns.asyncresolver

logger = logging.getLogger("portico.fleet")

HEALTHY = "healthy"
EJECTED = "ejected"
# The decay of the peak-EWMA latency (Finagle's default): a slow spell is forgotten within seconds.
EWMA_DECAY_SECONDS = 10.0
UNMEASURED_SECONDS = 1.0
# A drained instance's series are dropped this long after its last request ended (and was counted).
FORGET_AFTER_SECONDS = 1.0
# How long one DNS query may take, all its servers and retries included.
DNS_LIFETIME_SECONDS = 2.0


class FleetMetrics:
    """The metrics of a process's fleets, in its registry beside the other upstream metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.instances = Gauge(
            "portico_upstream_instances",
            "Instances of each called service, by state: healthy (taking requests) or ejected (out until a "
            "health check passes).",
            ("service", "state"),
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.retries = Counter(
            "portico_upstream_retries_total",
            "Retries of calls to other services: sent, or not sent because the service's retry budget was spent "
            "(budget_exhausted).",
            ("service", "outcome"),
            registry=registry,
        )
        self.ejections = Counter(
            "portico_upstream_ejections_total",
            "Instances taken out of a service's fleet after failing.",
            ("service",),
            registry=registry,
        )
        self.dns_failures = Counter(
            "portico_upstream_dns_failures_total",
            "Resolutions of a service's DNS name that failed or found no address (the last good set is kept).",
            ("service",),
            registry=registry,
        )


class Instance:
    """One instance of a service, and what the fleet knows of it."""

    __slots__ = (
        "base_url",
        "ejected",
        "ejections",
        "endpoint",
        "ewma",
        "failures",
        "host",
        "label",
        "last",
        "member",
        "outstanding",
        "port",
        "progress",
        "ready_at",
        "restored_at",
        "stamp",
    )

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.base_url = endpoint.base_url
        self.host = endpoint.host
        self.port = endpoint.port
        self.label = endpoint.label
        self.outstanding = 0
        self.failures = 0  # consecutive
        self.ejected = False
        self.ejections = 0  # consecutive, for the growing wait
        self.ready_at = 0.0  # an ejected instance is checked from then on
        self.restored_at = -math.inf
        self.progress = 0.0  # when it last answered, or began to have requests in flight
        self.ewma = 0.0  # peak-EWMA latency, seconds
        self.stamp = 0.0  # when `ewma` was last updated
        self.last = 0  # the fleet's choice counter when it was last chosen
        self.member = True  # False once discovery removed it (it drains)


class RetryBudget:
    """Retries may add at most `ratio` of the requests of the last `window` seconds, plus `floor`.

    Counted in ten buckets of a tenth of the window each: a request costs one increment, a retry sums
    the ten buckets."""

    BUCKETS = 10

    __slots__ = ("floor", "ratio", "requests", "retries", "stamps", "width")

    def __init__(self, ratio: float, floor: int, window: float) -> None:
        self.ratio = ratio
        self.floor = floor
        self.width = window / self.BUCKETS
        self.requests = [0] * self.BUCKETS
        self.retries = [0] * self.BUCKETS
        self.stamps = [-1] * self.BUCKETS

    def _slot(self, now: float) -> int:
        tick = int(now / self.width)
        slot = tick % self.BUCKETS
        if self.stamps[slot] != tick:
            self.stamps[slot] = tick
            self.requests[slot] = self.retries[slot] = 0
        return slot

    def deposit(self, now: float) -> None:
        """Counts a request."""
        self.requests[self._slot(now)] += 1

    def withdraw(self, now: float) -> bool:
        """Counts a retry and answers True when the budget allows one."""
        slot = self._slot(now)
        tick = self.stamps[slot]
        requests = retries = 0
        for index in range(self.BUCKETS):
            if tick - self.stamps[index] < self.BUCKETS:
                requests += self.requests[index]
                retries += self.retries[index]
        if retries + 1 > self.floor + self.ratio * requests:
            return False
        self.retries[slot] += 1
        return True


# Checks one instance's /health/ready; True when it answered 200.
Probe = Callable[[Instance], Awaitable[bool]]


@dataclass(eq=False, slots=True)
class Fleet:
    """The instances of one service in one process, shared by every client of the service there."""

    service: str
    address: ServiceAddress
    settings: ProcessSettings
    metrics: FleetMetrics
    probe: Probe
    on_forget: Callable[[str], None] | None = None
    budget: RetryBudget = field(init=False)
    peak_ewma: bool = field(init=False)
    stall: float = field(init=False)
    members: dict[str, Instance] = field(init=False, default_factory=dict)
    # The members not ejected.
    available: list[Instance] = field(init=False, default_factory=list)
    # Removed with requests still in flight.
    draining: dict[str, Instance] = field(init=False, default_factory=dict)
    # When any instance last answered.
    progress: float = field(init=False, default=0.0)
    sequence: int = field(init=False, default=0)
    resolved: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(init=False, default_factory=set)
    _checker: asyncio.Task[None] | None = field(init=False, default=None)
    _resolver: asyncio.Task[None] | None = field(init=False, default=None)
    _dns_problem: str | None = field(init=False, default=None)
    _healthy: Gauge = field(init=False)
    _ejected: Gauge = field(init=False)
    # A fixed fleet of one: nothing to choose, eject or count (the circuit breaker covers it).
    single: Instance | None = field(init=False)
    tracked: bool = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        self.budget = RetryBudget(
            settings.upstream_retry_budget_ratio,
            settings.upstream_retry_budget_min_retries,
            settings.upstream_retry_budget_window_seconds,
        )
        self.peak_ewma = settings.upstream_balancer == "peak_ewma"
        self.stall = settings.upstream_stall_seconds
        self._healthy = self.metrics.instances.labels(self.service, HEALTHY)
        self._ejected = self.metrics.instances.labels(self.service, EJECTED)
        endpoints = self.address.endpoints
        if self.address.dns_name is None:
            self._update(endpoints, 0.0)
            self.resolved.set()
        self.single = self.available[0] if len(endpoints) == 1 else None
        self.tracked = self.single is None
        self.start()

    # --- choosing

    def choose(self, now: float) -> Instance | None:
        """An instance for a request: the less loaded of two healthy ones drawn at random. None when the
        fleet has no instance at all (a DNS name that never answered)."""
        available = self.available
        count = len(available)
        if count < 2:
            if count == 1:
                return self._chosen(available[0])
            return self._panic()
        first = int(random.random() * count)
        second = int(random.random() * (count - 1))
        if second >= first:
            second += 1
        a, b = available[first], available[second]
        if self.stall and (self._stalled(a, now) or self._stalled(b, now)):
            return self.choose(now)
        if self.peak_ewma:
            cost_a, cost_b = self._cost(a), self._cost(b)
        else:
            cost_a, cost_b = a.outstanding, b.outstanding
        if cost_a < cost_b or (cost_a == cost_b and a.last < b.last):
            return self._chosen(a)
        return self._chosen(b)

    def choose_other(self, tried: list[Instance]) -> Instance | None:
        """An instance for a retry, other than those `tried`; None when there is no other."""
        others = [instance for instance in self.available if instance not in tried]
        if not others:
            return None
        best = min(others, key=lambda i: (self._cost(i) if self.peak_ewma else i.outstanding, i.last))
        return self._chosen(best)

    def _chosen(self, instance: Instance) -> Instance:
        self.sequence += 1
        instance.last = self.sequence
        return instance

    def _panic(self) -> Instance | None:
        """Every member is out (discovery removed the healthy ones): any member rather than none."""
        if not self.members:
            return None
        return self._chosen(min(self.members.values(), key=lambda i: i.ready_at))

    @staticmethod
    def _cost(instance: Instance) -> float:
        # Linkerd's and Finagle's peak EWMA: recent latency times the load. An instance without a
        # measured latency yet is cheap while idle and dear once it has a request in flight.
        if not instance.ewma:
            return instance.outstanding * UNMEASURED_SECONDS
        return instance.ewma * (instance.outstanding + 1)

    def _stalled(self, instance: Instance, now: float) -> bool:
        """Ejects an instance that answers nothing while the rest of the fleet answers; True if it did."""
        since = instance.progress
        if not instance.outstanding or now - since < self.stall or self.progress - since < self.stall:
            return False
        return self._eject(instance, now, f"no answer for {now - since:.1f} s with {instance.outstanding} in flight")

    # --- accounting (only for tracked fleets: the caller checks `tracked`)

    def begin(self, instance: Instance, now: float) -> None:
        if not instance.outstanding:
            instance.progress = now
        instance.outstanding += 1

    def end(self, instance: Instance, started: float, now: float) -> None:
        """A request to `instance` ended, answered or not."""
        instance.outstanding -= 1
        instance.progress = self.progress = now
        if self.peak_ewma:
            # A slower answer is taken at once (the peak); faster ones pull the average down over time.
            sample = now - started
            if sample > instance.ewma:
                instance.ewma = sample
            else:
                weight = math.exp(-max(now - instance.stamp, 0.0) / EWMA_DECAY_SECONDS)
                instance.ewma = instance.ewma * weight + sample * (1 - weight)
            instance.stamp = now
        if not instance.member and not instance.outstanding:
            self._forget(instance)

    def succeeded(self, instance: Instance) -> None:
        instance.failures = 0

    def failed(self, instance: Instance, now: float) -> None:
        instance.failures += 1
        if instance.failures >= self.settings.upstream_ejection_failures and instance.member and not instance.ejected:
            self._eject(instance, now, f"{instance.failures} failures in a row")

    def all_failing(self) -> bool:
        """True when no instance is known to be healthy: the service's circuit breaker counts the
        failure then (a fleet of one: always, as before fleets)."""
        if not self.tracked:
            return True
        return all(m.ejected or m.failures for m in self.members.values())

    # --- ejection and active checks

    def _eject(self, instance: Instance, now: float, why: str) -> bool:
        members = len(self.members)
        if members - len(self.available) + 1 > members // 2:
            return False  # never more than half of a fleet out at once
        if now - instance.restored_at > self.settings.upstream_ejection_max_seconds:
            instance.ejections = 0
        instance.ejections += 1
        wait = min(
            self.settings.upstream_ejection_seconds * 2 ** (instance.ejections - 1),
            self.settings.upstream_ejection_max_seconds,
        )
        instance.ejected = True
        instance.ready_at = now + wait
        self.available.remove(instance)
        self.metrics.ejections.labels(self.service).inc()
        self._gauge()
        logger.warning(
            "%s instance %s ejected (%s); checked on /health/ready after %.1f s",
            self.service,
            instance.label,
            why,
            wait,
        )
        if self._checker is None or self._checker.done():
            self._checker = self._spawn(self._check_ejected())
        return True

    def _restore(self, instance: Instance, now: float) -> None:
        instance.ejected = False
        instance.failures = 0
        instance.restored_at = instance.progress = now
        self.available.append(instance)
        self._gauge()
        logger.info("%s instance %s is back: its health check passed", self.service, instance.label)

    async def _check_ejected(self) -> None:
        """Runs while any instance is out: checks those whose wait is over, brings back those that pass."""
        loop = asyncio.get_running_loop()
        interval = self.settings.upstream_health_check_interval_seconds
        while True:
            out = [m for m in self.members.values() if m.ejected]
            if not out:
                return
            now = loop.time()
            due = [m for m in out if m.ready_at <= now]
            if due:
                passed = await asyncio.gather(*(self._check(m) for m in due))
                now = loop.time()
                for instance, ok in zip(due, passed, strict=True):
                    if not instance.ejected or not instance.member:
                        continue
                    if ok:
                        self._restore(instance, now)
                    else:
                        instance.ready_at = now + interval
            waits = [m.ready_at - now for m in self.members.values() if m.ejected]
            await asyncio.sleep(min(max(min(waits, default=0.0), 0.01), interval))

    async def _check(self, instance: Instance) -> bool:
        try:
            async with asyncio.timeout(self.settings.upstream_health_check_timeout_seconds):
                return await self.probe(instance)
        except Exception:  # any failure of the check means not back yet
            return False

    # --- membership

    def _update(self, endpoints: tuple[Endpoint, ...] | list[Endpoint], now: float) -> None:
        """The fleet is now `endpoints`: newcomers take requests at once, leavers drain."""
        wanted = {endpoint.label: endpoint for endpoint in endpoints}
        left = [label for label in self.members if label not in wanted]
        for label in left:
            instance = self.members.pop(label)
            instance.member = False
            if not instance.ejected:
                self.available.remove(instance)
            if instance.outstanding:
                self.draining[label] = instance
            else:
                self._forget(instance)
        joined = [label for label in wanted if label not in self.members]
        for label in joined:
            instance = self.draining.pop(label) if label in self.draining else Instance(wanted[label])
            instance.member = True
            instance.ejected = False
            instance.failures = 0
            instance.progress = now
            self.members[label] = instance
            self.available.append(instance)
        if left or joined:
            self._gauge()
            if self.address.dns_name is not None:
                logger.info(
                    "%s instances: %s (joined: %s; left: %s)",
                    self.service,
                    ", ".join(sorted(self.members)) or "none",
                    ", ".join(joined) or "none",
                    ", ".join(left) or "none",
                )

    def _forget(self, instance: Instance) -> None:
        """An instance that left has drained: its metrics series go, once its last request is counted."""
        if instance.label in self.draining:
            del self.draining[instance.label]
        with contextlib.suppress(RuntimeError):  # no loop: nothing was counted
            asyncio.get_running_loop().call_later(FORGET_AFTER_SECONDS, self._forgotten, instance.label)

    def _forgotten(self, label: str) -> None:
        if self.on_forget is not None and label not in self.members and label not in self.draining:
            self.on_forget(label)

    def _gauge(self) -> None:
        self._healthy.set(len(self.available))
        self._ejected.set(len(self.members) - len(self.available))

    # --- DNS

    def start(self) -> None:
        """Starts resolving a DNS name (needs the running loop; a no-op for fixed lists)."""
        if self.address.dns_name is None or self._resolver is not None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # started on the first call instead
        self._resolver = self._spawn(self._resolve_forever())

    async def wait_resolved(self, timeout: float) -> None:  # noqa: ASYNC109 - the caller's remaining time
        """Waits (up to `timeout`) for the first resolution of a DNS name, answered or failed."""
        self.start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.resolved.wait()

    async def _resolve_forever(self) -> None:
        resolver = self._resolver_of(self.settings)
        loop = asyncio.get_running_loop()
        while True:
            try:
                delay = await self._resolve(resolver, loop.time)
            except Exception:  # a bug here must not end discovery: keep the set, try again
                logger.exception("resolving %s failed", self.address.dns_name)
                delay = self.settings.upstream_dns_min_ttl_seconds
            self.resolved.set()
            await asyncio.sleep(delay)

    @staticmethod
    def _resolver_of(settings: ProcessSettings) -> dns.asyncresolver.Resolver:
        import dns.asyncresolver
        import dns.nameserver

        if not settings.upstream_dns_servers:
            resolver = dns.asyncresolver.Resolver()
        else:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*name_server(server)) for server in settings.upstream_dns_servers
            ]
        resolver.lifetime = DNS_LIFETIME_SECONDS
        resolver.cache = None  # the TTL is honoured here
        return resolver

    async def _resolve(self, resolver: dns.asyncresolver.Resolver, clock: Callable[[], float]) -> float:
        """One resolution of the name; answers how long to wait before the next."""
        import dns.exception
        import dns.resolver

        name = self.address.dns_name
        assert name is not None
        answers = await asyncio.gather(
            *(resolver.resolve(name, kind, search=True, raise_on_no_answer=False) for kind in ("A", "AAAA")),
            return_exceptions=True,
        )
        addresses: list[str] = []
        ttls: list[int] = []
        problems: list[str] = []
        for answer in answers:
            if isinstance(answer, dns.resolver.Answer):
                if answer.rrset is not None:
                    addresses += [record.to_text() for record in answer.rrset]
                    ttls.append(answer.rrset.ttl)
            elif isinstance(answer, dns.exception.DNSException):
                problems.append(type(answer).__name__)
            else:
                raise answer
        settings = self.settings
        if not addresses:
            problem = "no address" if len(problems) < len(answers) else " and ".join(sorted(set(problems)))
            self.metrics.dns_failures.labels(self.service).inc()
            if problem != self._dns_problem:
                self._dns_problem = problem
                logger.warning(
                    "resolving %s for %s: %s; keeping %s",
                    name,
                    self.service,
                    problem,
                    ", ".join(sorted(self.members)) or "no instance (calls answer 503)",
                )
            return settings.upstream_dns_min_ttl_seconds
        if self._dns_problem is not None:
            logger.info("resolving %s for %s works again", name, self.service)
            self._dns_problem = None
        self._update([self.address.endpoint_at(address) for address in sorted(set(addresses))], clock())
        return min(max(float(min(ttls)), settings.upstream_dns_min_ttl_seconds), settings.upstream_dns_max_ttl_seconds)

    # --- life

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
