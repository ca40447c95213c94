"""The guard against writes that never stop: a resource updated too often.

A decision must converge: after a successful write, the same observation
must plan "in sync". When it does not (a planner bug), or when another
writer changes the resource back each time, the daemon would update it in a
loop. `WriteGuard` counts each resource's updates in a sliding window; past
the limit the worker holds the resource (reported as not converging,
never written) until the window has passed or the config is reloaded.
Creates are not counted: a create only ever follows someone else's delete,
and healing every delete of a storm is the product's first promise.
Pure, on an injected clock; `worker` keeps it and each pass asks `allows`
before an update (`reconcile.Rules.may_update`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

WRITES_PER_WINDOW = 5  # updates of one resource allowed within WRITE_WINDOW
WRITE_WINDOW = 60.0  # seconds
MIN_WAIT = 0.001  # the shortest hold: far below the window, far above float rounding


class WriteGuard:
    def __init__(
        self,
        clock: Callable[[], float],
        *,
        limit: int = WRITES_PER_WINDOW,
        window: float = WRITE_WINDOW,
    ) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self._writes: dict[str, deque[float]] = {}
        # Held before and not seen in sync since: one write per window from
        # now on, so a planner that never converges costs one write a window.
        self._struck: set[str] = set()

    def _recent(self, key: str) -> deque[float]:
        writes = self._writes.setdefault(key, deque())
        horizon = self.clock() - self.window
        while writes and writes[0] <= horizon:
            writes.popleft()
        return writes

    def allows(self, key: str) -> bool:
        """May `key` be updated now?"""
        return len(self._recent(key)) < (1 if key in self._struck else self.limit)

    def wrote(self, key: str) -> None:
        self._recent(key).append(self.clock())

    def hold(self, key: str) -> bool:
        """Record that an update of `key` was refused; True for the first
        refusal of an episode (the one worth an ERROR line)."""
        first = key not in self._struck
        self._struck.add(key)
        return first

    def converged(self, key: str) -> None:
        """`key` was seen in sync: the episode is over."""
        self._struck.discard(key)

    def count(self, key: str) -> int:
        return len(self._recent(key))

    def reopens_in(self, key: str) -> float:
        """Seconds until `key` may be updated again: 0 exactly when `allows`."""
        writes = self._recent(key)
        allowed = 1 if key in self._struck else self.limit
        if len(writes) < allowed:
            return 0.0
        # Never 0 while refused: `t + window - now` can round to 0 when
        # `t > now - window` does not, and a wait of 0 is a retry at once.
        return max(MIN_WAIT, writes[-allowed] + self.window - self.clock())

    def reset(self) -> None:
        self._writes.clear()
        self._struck.clear()
