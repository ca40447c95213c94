"""The one reconcile worker: drains the work queue into passes, one at a time.

Triggers only mark work (`queue.WorkQueue`); this worker takes what piled up
as one batch and runs it as one pass (`reconcile`), bounded by
`pass_deadline`, so passes never overlap. Around each pass it keeps the
bookkeeping: per-resource backoff (`backoff`), a second look shortly after
each write (the broker may drop the advisory of a delete that follows at
once), the write guard against updates that never converge (`guard`), and
what each permanent failure depended on, so it is retried early once that
changes (`core.causes`). Each finished pass goes to the reporters as a
`reports.PassReport`; the worker itself logs nothing. The daemon hands it
a broker (`attach`) and talks to it only through the public methods below.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol

from kanade_watchdog.core import causes, desired, plan
from kanade_watchdog.core.plan import Decision, Observed
from kanade_watchdog.core.ports import Broker, Reporter
from kanade_watchdog.core.reports import Cut, Done, Failed, Held, PassReport, Scope
from kanade_watchdog.core.result import Result
from kanade_watchdog.core.serverinfo import ServerInfo
from kanade_watchdog.daemon.backoff import Backoff
from kanade_watchdog.daemon.consumers import ConsumerKeeper
from kanade_watchdog.daemon.guard import WriteGuard
from kanade_watchdog.daemon.queue import Batch, WorkQueue
from kanade_watchdog.daemon.reconcile import Claims, Pass, Rules, reconcile
from kanade_watchdog.model.events import Trigger
from kanade_watchdog.model.resources import Resource
from kanade_watchdog.model.settings import Config

# How long a transient failure stays unsaid; named here too, where the fault
# suites look for the daemon's timings.
from kanade_watchdog.report.failures import TRANSIENT_QUIET as TRANSIENT_QUIET  # noqa: PLC0414

EVERYTHING = "*"  # the backoff key of a failed full read
# A second look this long after a write: the broker drops some advisories of a
# stream deleted right after it was created, and a lost one must cost
# milliseconds, not a resync interval.
REVERIFY_AFTER = 0.15


class Decide(Protocol):
    """`plan.decide`'s signature (tests hand the worker other planners)."""

    def __call__(
        self,
        resource: Resource,
        observed: Observed | None,
        now: datetime,
        *,
        own_hashes: frozenset[str] = ...,
        server: ServerInfo | None = ...,
    ) -> Decision: ...


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Worker:
    def __init__(
        self,
        config: Config,
        *,
        reporter: Reporter,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
        decide: Decide = plan.decide,
    ) -> None:
        self.config = config
        self.reporter = reporter
        self.clock = clock
        self.now = now
        self.decide = decide
        self.queue = WorkQueue(clock)
        self.backoff = self._new_backoff()
        self.guard = WriteGuard(clock)
        self.generation = 0  # one per reload: a pass runs on one config
        self._by_stream = config.by_stream()
        self._managed = frozenset(self._by_stream)
        self._broker: Broker | None = None
        self._passes = 0
        self._connected = asyncio.Event()
        self._busy_since: float | None = None  # set while a pass runs (watchdog)
        self._idle = asyncio.Event()  # clear while a pass runs (graceful stop)
        self._idle.set()
        self._current: set[asyncio.Future[Pass]] = set()  # the passes in flight
        self._active = 0  # passes running: a full one, and a partial in its fast lane
        self._numbered = 0  # passes started
        self._claims = Claims()  # who writes which stream while two passes run
        self._deferred: dict[str, Trigger] = {}  # marks the fast lane left to after the full
        self._own_hashes: dict[str, frozenset[str]] = {}
        # The broker as last seen: a full pass's list, then each read and write.
        self._view: dict[str, Observed] = {}
        self._causes: dict[str, causes.Cause] = {}  # stream -> why it failed for good
        self.consumers = ConsumerKeeper()  # declared consumers, healed after each pass

    def _new_backoff(self) -> Backoff:
        w = self.config.watchdog
        return Backoff(
            initial=w.backoff_initial,
            maximum=w.backoff_max,
            permanent=w.permanent_retry,
            clock=self.clock,
        )

    # --- what the daemon asks -----------------------------------------------------

    @property
    def passes(self) -> int:
        """Passes finished (or cut short) so far."""
        return self._passes

    @property
    def attached(self) -> bool:
        return self._connected.is_set()

    @property
    def busy(self) -> bool:
        """A pass is running."""
        return self._busy_since is not None

    def stuck_for(self, now: float) -> float:
        """Seconds the pass in flight has been running at `now` (0 when idle)."""
        return 0.0 if self._busy_since is None else max(0.0, now - self._busy_since)

    async def wait_idle(self, *, within: float) -> bool:
        """Until no pass runs, for at most `within` seconds; True if idle."""
        try:
            async with asyncio.timeout(within):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    # --- marks, connection and config, from the daemon -----------------------------

    def mark_all(self, trigger: Trigger) -> None:
        self.queue.mark_all(trigger)

    def mark(self, stream: str, trigger: Trigger) -> None:
        self.queue.mark(stream, trigger)

    def attach(self, broker: Broker, trigger: Trigger | None = None) -> None:
        """A (new) connection: requests that died with the old one are retried
        now, not when their backoff says, and `trigger` marks everything."""
        self._broker = broker
        self.backoff.forget_transient()
        self._connected.set()
        if trigger is not None:
            self.queue.mark_all(trigger)

    def detach(self) -> None:
        """The connection is lost: requests in flight can only time out now,
        so the pass waiting on them is cut short; the reconnect's full pass
        redoes whatever it had not finished."""
        self._connected.clear()
        for current in self._current:
            if not current.done():
                current.cancel()

    def reload(self, config: Config) -> None:
        """Swap the declaration; everything is looked at again, from scratch."""
        # What the previous config wrote is this process's own work: an edit
        # made without raising spec_version replaces it instead of being
        # mistaken for another watchdog's.
        for res in self.config.resources:
            mine = self._own_hashes.get(res.stream, frozenset())
            self._own_hashes[res.stream] = mine | {desired.spec_hash(res)}
        self.config = config
        self.generation += 1
        self._by_stream = config.by_stream()
        self._managed = frozenset(self._by_stream)
        self.backoff = self._new_backoff()
        self.guard.reset()
        self._causes.clear()
        self.queue.mark_all(Trigger.RELOAD)

    def advisory(self, stream: str) -> None:
        """A stream changed on the broker: look at it if declared, and at every
        resource whose permanent failure depends on it."""
        if stream in self._managed:
            self.queue.mark(stream, Trigger.ADVISORY)
        self._wake_dependents(stream, Trigger.ADVISORY)

    def _wake_dependents(self, stream: str, trigger: Trigger) -> None:
        for blocked, cause in list(self._causes.items()):
            if stream in cause.related and blocked != stream:
                self.queue.mark(blocked, trigger)

    # --- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Drain marks into passes until cancelled."""
        while True:
            await self.queue.wait(self.backoff.next_due())
            for key in self.backoff.pop_due():
                if key == EVERYTHING:
                    self.queue.mark_all(Trigger.RETRY)
                else:
                    self.queue.mark(key, Trigger.RETRY)
            for key in self.backoff.pop_checks():
                self.queue.mark(key, Trigger.VERIFY)
            batch = self.queue.take()
            if not batch:
                continue
            if not self._connected.is_set():
                # Nothing to do until the reconnect callback marks everything.
                await self._connected.wait()
                continue
            if batch.full is None:
                await self.run_pass(batch)
                continue
            full = asyncio.ensure_future(self.run_pass(batch))
            try:
                await self._fast_lane(full)
                await full
            finally:
                full.cancel()  # no-op once done; the worker's own stop otherwise
                for stream, trigger in self._deferred.items():
                    self.queue.mark(stream, trigger)
                self._deferred.clear()

    async def _fast_lane(self, full: asyncio.Future[PassReport]) -> None:
        """While a full pass runs, marks of single streams (advisories, the
        second look after a write) are served by partial passes beside it, one
        at a time, instead of waiting for the whole broker to be looked at. A
        stream the full pass is writing right then is left to after it
        (`Claims`); a new full mark waits for the next full pass."""
        while not full.done():
            waiting = asyncio.ensure_future(self.queue.wait_streams())
            try:
                await asyncio.wait((full, waiting), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
            if full.done() or not self._connected.is_set():
                return
            batch = self.queue.take_streams()
            if batch:
                await self.run_pass(batch)

    async def run_pass(self, batch: Batch) -> PassReport:
        """One pass over `batch`, within pass_deadline; reported, and returned."""
        assert self._broker is not None
        started = self.clock()
        if self._busy_since is None:
            self._busy_since = started
        self._active += 1
        self._numbered += 1
        self._idle.clear()
        deadline = self.config.watchdog.pass_deadline
        head = PassReport(
            number=self._numbered,
            generation=self.generation,
            scope=Scope.FULL if batch.full is not None else Scope.PARTIAL,
            trigger=batch.full,
            started=started,
            finished=started,
            deadline=deadline,
        )
        now = self.now()
        rules = Rules(
            decide=self._decider(now), waiting=self._waiting, may_update=self.guard.allows
        )
        current = asyncio.ensure_future(
            reconcile(
                self._broker,
                batch,
                self.config.resources,
                rules,
                head=head,
                now=now,
                clock=self.clock,
                claims=self._claims,
                by_stream=self._by_stream,
            )
        )
        self._current.add(current)
        try:
            # Not wait_for: on 3.11 it returns the result of a pass that ends
            # as the worker is cancelled, and the stop is lost.
            async with asyncio.timeout(deadline):
                result = await current
                await self.consumers.after_pass(
                    self._broker,
                    config=self.config,
                    full=batch.full is not None,
                    marked=batch.streams,
                    listed=result.listed,
                    seen=result.seen,
                )
            for stream in result.skipped:
                self._deferred.setdefault(stream, batch.streams.get(stream, Trigger.RETRY))
            report = replace(
                self._book(result), consumers_missing=self.consumers.missing(self.config)
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the worker itself is stopping
            report = replace(head, finished=self.clock(), cut=Cut.LOST)
        except TimeoutError:
            self.backoff.failed(EVERYTHING, transient=True)
            report = replace(head, finished=self.clock(), cut=Cut.DEADLINE)
        finally:
            current.cancel()  # no-op once done; cut by the deadline or a stop otherwise
            self._current.discard(current)
            self._active -= 1
            if self._active == 0:
                self._busy_since = None
                self._idle.set()
            self._passes += 1
        self.reporter.pass_done(report)
        return report

    def _decider(self, now: datetime) -> Callable[[Resource, Observed | None], Decision]:
        server = self._broker.server if self._broker is not None else None

        def decide(res: Resource, observed: Observed | None) -> Decision:
            mine = self._own_hashes.get(res.stream, frozenset())
            return self.decide(res, observed, now, own_hashes=mine, server=server)

        return decide

    def _waiting(self, res: Resource, observed: Mapping[str, Observed]) -> bool:
        """A full pass leaves a resource alone while its backoff runs, unless
        what its permanent failure depended on has changed."""
        if self.backoff.due(res.stream):
            return False
        cause = self._causes.get(res.stream)
        return cause is None or not causes.changed(res, cause, observed)

    # --- bookkeeping of a pass's outcomes -------------------------------------------

    def _book(self, result: Pass) -> PassReport:
        report = result.report
        if result.listed is not None:
            self._view = dict(result.listed)
            self.backoff.succeeded(EVERYTHING)
        for stream, observed in result.seen.items():
            if observed is None:
                self._view.pop(stream, None)
            else:
                self._view[stream] = observed
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
        self._causes.pop(stream, None)
        if done.result in (Result.CREATED, Result.UPDATED):
            if done.result is Result.UPDATED:
                self.guard.wrote(stream)
            self.backoff.recheck(stream, REVERIFY_AFTER)
            self._wake_dependents(stream, Trigger.RETRY)  # we changed what they wait on
        elif done.result is Result.IN_SYNC:
            self.guard.converged(stream)

    def _failed(self, failed: Failed) -> Failed:
        stream = failed.resource.stream
        delay = self.backoff.failed(stream, transient=failed.transient)
        if failed.transient:
            self._causes.pop(stream, None)
        else:
            self._causes[stream] = causes.cause_of(failed.resource, failed.error, self._view)
        return replace(failed, delay=delay)

    def _hold(self, held: Held) -> Held:
        """An update refused by the guard: held until the window passes."""
        stream = held.decision.resource.stream
        first = self.guard.hold(stream)
        wait = self.guard.reopens_in(stream)
        self.backoff.defer(stream, wait)
        self._causes.pop(stream, None)
        reason = (
            f"not converging: updated {self.guard.count(stream)} times within "
            f"{self.guard.window:g}s and still not in sync (another writer changing it "
            "back, or a declaration the broker does not keep); not written again for "
            f"{wait:.0f}s or until a reload"
        )
        return replace(held, reason=reason, first=first, wait=wait)
