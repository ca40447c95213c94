"""The memory behind "say it once, stay quiet while it is transient".

One `FailureMemory` per reporter that speaks to an operator (`outcomes`):
for each key (a stream, or the broker's stream list) it remembers what was
last said and since when the key has been failing. A failure is said when
it is new, not while the same failure repeats, and not while a transient
one is younger than `quiet` seconds (elections and restarts make requests
fail for a few seconds; that is not worth a warning unless it lasts).
Pure, on an injected clock.
"""

from __future__ import annotations

from collections.abc import Callable

TRANSIENT_QUIET = 15.0  # seconds a transient failure stays unsaid (elections)


class FailureMemory:
    def __init__(self, clock: Callable[[], float], *, quiet: float = TRANSIENT_QUIET) -> None:
        self.clock = clock
        self.quiet = quiet
        self._said: dict[str, str] = {}  # key -> what was last said about it
        self._since: dict[str, float] = {}  # key -> when its current failure began

    def failing(self, key: str, said: str, *, transient: bool) -> bool:
        """`key` failed with `said` (its identity: the same text or error code
        is the same failure). True when it is worth saying now."""
        since = self._since.setdefault(key, self.clock())
        if transient and self.clock() - since < self.quiet:
            return False
        if self._said.get(key) == said:
            return False
        self._said[key] = said
        return True

    def standing(self, key: str, said: str) -> bool:
        """`key` is in a steady state worth saying once (blocked, a newer spec,
        not converging): no quiet period. True when `said` is news."""
        self._since.pop(key, None)
        news = self._said.get(key) != said
        self._said[key] = said
        return news

    def cleared(self, key: str) -> str | None:
        """`key` is fine again; returns what had been said about it, if anything
        (worth a "recovered" line)."""
        self._since.pop(key, None)
        return self._said.pop(key, None)

    def forget(self) -> None:
        """A reload: whatever was said is said again if it still holds."""
        self._said.clear()
