"""Per-resource retry timing: exponential with jitter for transient errors,
a slow steady pace for permanent ones, reset on success; and one-shot
re-checks of resources just written.

The delays come from tenacity's wait strategies; the scheduling is ours,
because a failing resource must never make the worker sleep: the worker asks
`due()`/`next_due()` and keeps serving everything else. Time is injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import RetryCallState, Retrying, wait_exponential_jitter, wait_fixed, wait_random
from tenacity.wait import wait_base


@dataclass
class _State:
    attempts: int
    due_at: float
    transient: bool


class Backoff:
    def __init__(
        self,
        *,
        initial: float,
        maximum: float,
        permanent: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self._transient: wait_base = wait_exponential_jitter(
            multiplier=initial, max=maximum, jitter=initial
        )
        # A permanent error is a fact about the broker or the config; asking
        # again every few minutes (spread so several watchdogs do not align)
        # notices when an operator fixed it without hammering meanwhile.
        self._permanent: wait_base = wait_fixed(permanent) + wait_random(0, permanent / 10)
        self._states: dict[str, _State] = {}
        self._checks: dict[str, float] = {}  # key -> when to look at it once more
        self._retrying = Retrying()  # only as the context tenacity's waits expect

    def failed(self, key: str, *, transient: bool) -> float:
        """Record a failure; returns the delay before the next attempt."""
        prev = self._states.get(key)
        attempts = prev.attempts + 1 if prev and prev.transient == transient else 1
        state = RetryCallState(self._retrying, None, (), {})
        state.attempt_number = attempts
        delay = float((self._transient if transient else self._permanent)(state))
        self._states[key] = _State(attempts, self.clock() + delay, transient)
        return delay

    def defer(self, key: str, delay: float) -> None:
        """Leave `key` alone for `delay` seconds, as if it had failed for good."""
        prev = self._states.get(key)
        attempts = prev.attempts + 1 if prev and not prev.transient else 1
        self._states[key] = _State(attempts, self.clock() + delay, transient=False)

    def recheck(self, key: str, delay: float) -> None:
        """Look at `key` once more after `delay`, whatever happens meanwhile: a
        look sooner (the advisory of our own write) may come before the
        change the re-check is for."""
        self._checks[key] = self.clock() + delay

    def succeeded(self, key: str) -> None:
        self._states.pop(key, None)

    def attempts(self, key: str) -> int:
        state = self._states.get(key)
        return state.attempts if state else 0

    def due(self, key: str) -> bool:
        state = self._states.get(key)
        return state is None or state.due_at <= self.clock()

    def waiting(self) -> list[str]:
        return list(self._states)

    def pop_due(self) -> list[str]:
        """Keys whose retry time has come (they stay recorded until success)."""
        now = self.clock()
        return [k for k, s in self._states.items() if s.due_at <= now]

    def pop_checks(self) -> list[str]:
        """Keys whose re-check time has come (each is handed out once)."""
        now = self.clock()
        due = [k for k, at in self._checks.items() if at <= now]
        for key in due:
            del self._checks[key]
        return due

    def next_due(self) -> float | None:
        """Seconds until the earliest retry or re-check, or None when nothing waits."""
        times = [s.due_at for s in self._states.values()] + list(self._checks.values())
        if not times:
            return None
        return max(0.0, min(times) - self.clock())

    def forget_transient(self) -> None:
        """A new connection makes every connection-level failure moot (and the
        full pass it brings looks at everything, re-checks included)."""
        self._states = {k: s for k, s in self._states.items() if not s.transient}
        self._checks.clear()
