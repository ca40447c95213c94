"""The worker's books: what each pass's outcomes leave behind for the next.

Per resource: its retry timing (`backoff`, keyed by stream, `STREAM/DURABLE`
for a consumer, `EVERYTHING` for the full list), a second look shortly after
each write (the broker may drop the advisory of a delete that follows at
once), the write guard against updates that never converge (`guard`), and
what each permanent failure depended on, so it is retried early once that
changes (`core.causes`), judged on the broker as last seen (`view`). The
worker books every pass here (`book`) and asks before a full pass whether a
resource is still waiting (`waiting`); a change that a waiting resource
depended on marks it on the queue (`wake_dependents`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from kanade_watchdog.core import causes
from kanade_watchdog.core.plan import Observed
from kanade_watchdog.core.reports import Done, Failed, Held, PassReport
from kanade_watchdog.core.result import Result
from kanade_watchdog.daemon.backoff import Backoff
from kanade_watchdog.daemon.guard import WriteGuard
from kanade_watchdog.daemon.memo import InSyncMemo
from kanade_watchdog.daemon.queue import WorkQueue
from kanade_watchdog.daemon.reconcile import Pass
from kanade_watchdog.model.events import Trigger
from kanade_watchdog.model.resources import Resource
from kanade_watchdog.model.settings import Config

EVERYTHING = "*"  # the backoff key of a failed full read
# A second look this long after a write: the broker drops some advisories of a
# stream deleted right after it was created, and a lost one must cost
# milliseconds, not a resync interval.
REVERIFY_AFTER = 0.15


class Configs(Mapping[str, Observed]):
    """Kept configs seen as observations, for `core.causes` (made on demand:
    a cause is judged only when a resource fails for good)."""

    def __init__(self, configs: Mapping[str, Mapping[str, Any]]) -> None:
        self._configs = configs

    def __getitem__(self, stream: str) -> Observed:
        return Observed(config=self._configs[stream])

    def __iter__(self) -> Iterator[str]:
        return iter(self._configs)

    def __len__(self) -> int:
        return len(self._configs)


def new_backoff(config: Config, clock: Callable[[], float]) -> Backoff:
    w = config.watchdog
    return Backoff(
        initial=w.backoff_initial,
        maximum=w.backoff_max,
        permanent=w.permanent_retry,
        clock=clock,
    )


class Books:
    def __init__(
        self,
        config: Config,
        *,
        queue: WorkQueue,
        memo: InSyncMemo,
        clock: Callable[[], float],
    ) -> None:
        self.clock = clock
        self.queue = queue
        self.memo = memo
        self.backoff = new_backoff(config, clock)
        self.guard = WriteGuard(clock)
        # The broker as last seen: a full pass's list, then each read and write;
        # configs only, all a cause is judged on (at 10,000 streams the states
        # and wrappers kept besides were ~6 MiB).
        self.view: dict[str, Mapping[str, Any]] = {}
        self.causes: dict[str, causes.Cause] = {}  # stream -> why it failed for good

    def reload(self, config: Config) -> None:
        """A new declaration: every resource is tried again from scratch."""
        self.backoff = new_backoff(config, self.clock)
        self.guard.reset()
        self.causes.clear()

    def waiting(self, res: Resource, observed: Mapping[str, Observed]) -> bool:
        """A full pass leaves a resource alone while its backoff runs, unless
        what its permanent failure depended on has changed."""
        if self.backoff.due(res.stream):
            return False
        cause = self.causes.get(res.stream)
        return cause is None or not causes.changed(res, cause, observed)

    def wake_dependents(self, stream: str, trigger: Trigger) -> None:
        """`stream` changed: mark every resource whose permanent failure named it."""
        for blocked, cause in list(self.causes.items()):
            if stream in cause.related and blocked != stream:
                self.queue.mark(blocked, trigger)

    # --- bookkeeping of a pass's outcomes -------------------------------------------

    def book(self, result: Pass) -> PassReport:
        report = result.report
        if result.listed is not None:
            self.view = {stream: observed.config for stream, observed in result.listed.items()}
            self.backoff.succeeded(EVERYTHING)
        for stream, observed in result.seen.items():
            if observed is None:
                self.view.pop(stream, None)
            else:
                self.view[stream] = observed.config
        read_error = report.read_error
        if read_error is not None:
            delay = self.backoff.failed(EVERYTHING, transient=read_error.transient)
            read_error = replace(read_error, delay=delay)
        held = tuple(self._hold(h) for h in report.held)
        failed = tuple(self._failed(f) for f in report.failed)
        for done in report.done:
            self._done(done)
        return replace(report, read_error=read_error, held=held, failed=failed)

    def _done(self, done: Done) -> None:
        stream = done.resource.stream
        self.backoff.succeeded(stream)
        self.causes.pop(stream, None)
        if done.result in (Result.CREATED, Result.UPDATED):
            if done.result is Result.UPDATED:
                self.guard.wrote(stream)
            self.backoff.recheck(stream, REVERIFY_AFTER)
            self.wake_dependents(stream, Trigger.RETRY)  # we changed what they wait on
        elif done.result is Result.IN_SYNC:
            self.guard.converged(stream)

    def _failed(self, failed: Failed) -> Failed:
        stream = failed.resource.stream
        self.memo.forget(stream)  # reported failing: the next in-sync look is news
        delay = self.backoff.failed(stream, transient=failed.transient)
        if failed.transient:
            self.causes.pop(stream, None)
        else:
            seen = Configs(self.view)
            self.causes[stream] = causes.cause_of(failed.resource, failed.error, seen)
        return replace(failed, delay=delay)

    def _hold(self, held: Held) -> Held:
        """An update refused by the guard: held until the window passes."""
        stream = held.decision.resource.stream
        self.memo.forget(stream)
        first = self.guard.hold(stream)
        wait = self.guard.reopens_in(stream)
        self.backoff.defer(stream, wait)
        self.causes.pop(stream, None)
        reason = (
            f"not converging: updated {self.guard.count(stream)} times within "
            f"{self.guard.window:g}s and still not in sync (another writer changing it "
            "back, or a declaration the broker does not keep); not written again for "
            f"{wait:.0f}s or until a reload"
        )
        return replace(held, reason=reason, first=first, wait=wait)
