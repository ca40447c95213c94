"""What happened to a resource in a pass: data handed to the reporters.

Pure. `broker.apply.execute` turns a `Decision` into an `Outcome`; the
reporters (logs, journal, status, metrics) and `render` read them.
"""

from __future__ import annotations

from dataclasses import dataclass

from kanade_watchdog.core.plan import Decision, Observed
from kanade_watchdog.core.result import Result
from kanade_watchdog.model.errors import ResourceError


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    result: Result
    error: ResourceError | None = None
    observed: Observed | None = None  # the broker's answer after a write

    @property
    def ok(self) -> bool:
        return self.result in (Result.CREATED, Result.UPDATED, Result.IN_SYNC)
