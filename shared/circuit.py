"""The circuit breaker a process keeps for each service it calls (`CallPolicy`, `shared/calls.py`)."""

from __future__ import annotations

import enum
import logging
import time
from collections import deque

from prometheus_client import Gauge

from shared.errors import CircuitOpen
from shared.settings import ProcessSettings

# The logger of calls to other services, the name the operations docs give for circuit transitions.
logger = logging.getLogger("portico.http")


class CircuitState(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """closed -> open after `failure_threshold` failures within `window_seconds` -> half-open after
    `open_seconds`, letting `half_open_calls` trial calls through -> closed when a trial succeeds, open
    again when one fails. Single-threaded (one event loop), so no lock."""

    def __init__(self, service: str, settings: ProcessSettings, gauge: Gauge) -> None:
        self.service = service
        self.enabled = settings.circuit_enabled
        self.threshold = settings.circuit_failure_threshold
        self.window = settings.circuit_window_seconds
        self.open_seconds = settings.circuit_open_seconds
        self.half_open_calls = settings.circuit_half_open_calls
        # This service's child of `portico_circuit_state`.
        self.gauge = gauge
        self.state = CircuitState.CLOSED
        self.failures: deque[float] = deque()
        self.opened_at = 0.0
        self.trials = 0
        self.gauge.set(self.state)

    def _move(self, state: CircuitState, why: str) -> None:
        if state is self.state:
            return
        log = logger.warning if state is CircuitState.OPEN else logger.info
        log("circuit of %s: %s -> %s (%s)", self.service, self.state.name.lower(), state.name.lower(), why)
        self.state = state
        self.gauge.set(state)

    def retry_after(self) -> int:
        """Whole seconds until a trial call may go through (at least 1)."""
        left = self.open_seconds - (time.monotonic() - self.opened_at)
        return max(1, int(left + 0.999))

    def before_call(self) -> bool:
        """Raises CircuitOpen when the call may not go out; True when it is a half-open trial."""
        if not self.enabled or self.state is CircuitState.CLOSED:
            return False
        if self.state is CircuitState.OPEN:
            if time.monotonic() - self.opened_at < self.open_seconds:
                raise CircuitOpen(self.service, self.retry_after())
            self._move(CircuitState.HALF_OPEN, f"{self.open_seconds:g} s open, trying again")
            self.trials = 0
        if self.trials >= self.half_open_calls:
            raise CircuitOpen(self.service, 1)
        self.trials += 1
        return True

    def after_call(self, trial: bool, *, failed: bool | None) -> None:
        """Records a call's end: `failed` None when it ended without a verdict (cancelled)."""
        if trial:
            self.trials = max(0, self.trials - 1)
        if not self.enabled or failed is None:
            return
        now = time.monotonic()
        if not failed:
            if self.state is CircuitState.HALF_OPEN:
                self.failures.clear()
                self._move(CircuitState.CLOSED, "a trial call succeeded")
            return
        if self.state is CircuitState.HALF_OPEN:
            self.opened_at = now
            self._move(CircuitState.OPEN, "a trial call failed")
            return
        self.failures.append(now)
        while self.failures and self.failures[0] <= now - self.window:
            self.failures.popleft()
        if self.state is CircuitState.CLOSED and len(self.failures) >= self.threshold:
            self.opened_at = now
            self.failures.clear()
            self._move(CircuitState.OPEN, f"{self.threshold} failures within {self.window:g} s")
