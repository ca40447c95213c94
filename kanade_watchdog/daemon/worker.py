"""The one reconcile worker: drains the work queue into passes, one at a time.

Triggers only mark work (`queue.WorkQueue`); this worker takes what piled up
as one batch and runs it as one pass (`reconcile`), bounded by
`pass_deadline`, so passes never overlap. Each pass is booked (`books`:
backoff, second looks, the write guard, the causes of permanent failures)
and goes to the reporters as a `reports.PassReport`; the worker itself
logs nothing. The daemon hands it
a broker (`attach`) and talks to it only through the public methods below.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol

from kanade_watchdog.core import desired, plan
from kanade_watchdog.core.plan import Decision, Observed
from kanade_watchdog.core.ports import Broker, Reporter
from kanade_watchdog.core.reports import Cut, PassReport, Scope
from kanade_watchdog.core.serverinfo import ServerInfo
from kanade_watchdog.daemon.backoff import Backoff
from kanade_watchdog.daemon.books import EVERYTHING, Books
from kanade_watchdog.daemon.consumers import ConsumerKeeper
from kanade_watchdog.daemon.echoes import Echoes
from kanade_watchdog.daemon.guard import WriteGuard
from kanade_watchdog.daemon.heap import Heap
from kanade_watchdog.daemon.memo import InSyncMemo
from kanade_watchdog.daemon.queue import Batch, WorkQueue
from kanade_watchdog.daemon.reconcile import Claims, Pass, Rules, reconcile
from kanade_watchdog.model.events import Trigger
from kanade_watchdog.model.resources import Resource
from kanade_watchdog.model.settings import Config

# How long a transient failure stays unsaid; named here too, where the fault
# suites look for the daemon's timings.
from kanade_watchdog.report.failures import TRANSIENT_QUIET as TRANSIENT_QUIET  # noqa: PLC0414


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
        self._memo = InSyncMemo()  # a resync at 10,000 resources plans only what changed
        self.books = Books(config, queue=self.queue, memo=self._memo, clock=clock)
        self._echoes = Echoes(clock)  # our own creates' CREATED advisories
        self._heap = Heap(clock)  # what a full pass keeps, frozen out of the collector
        self.consumers = ConsumerKeeper(clock)  # declared consumers, healed after each pass

    @property
    def backoff(self) -> Backoff:
        return self.books.backoff

    @property
    def guard(self) -> WriteGuard:
        return self.books.guard

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
        self._memo.keep_only(self._managed)  # one declared again must be reported again
        self.books.reload(config)
        self.queue.mark_all(Trigger.RELOAD)

    def advisory(self, stream: str, *, created: bool = False) -> None:
        """A stream changed on the broker: look at it if declared, and at every
        resource whose permanent failure depends on it; the CREATED advisory of
        the daemon's own create is its echo, and marks nothing (`echoes`)."""
        if created and self._echoes.own(stream):
            return
        if stream in self._managed:
            self.queue.mark(stream, Trigger.ADVISORY)
        self.books.wake_dependents(stream, Trigger.ADVISORY)
        self.consumers.wake(stream, self.config)  # its consumers, backoff or not

    def consumer_advisory(self, consumer: str, stream: str, *, created: bool = False) -> None:
        """A declared consumer (`STREAM/DURABLE`) changed on the broker: look at
        it now, even while its backoff runs; the CREATED advisory of the
        daemon's own create is its echo, and marks nothing (`echoes`)."""
        if created and self.consumers.echoes.own(consumer):
            return
        self.consumers.wake(consumer, self.config)
        self.queue.mark(stream, Trigger.ADVISORY)

    # --- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Drain marks into passes until cancelled."""
        while True:
            await self.queue.wait(self.backoff.next_due())
            for key in self.backoff.pop_due():
                if key == EVERYTHING:
                    self.queue.mark_all(Trigger.RETRY)
                else:  # a stream, or a consumer (STREAM/DURABLE): its stream's pass
                    self.queue.mark(key.partition("/")[0], Trigger.RETRY)
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
                done = await full
                if done.cut is None and done.read_error is None:
                    self._heap.settled()
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
        # Read once a pass: parsing the connection's INFO for each of 10,000
        # resources cost ~20 ms.
        server = self._broker.server
        rules = Rules(
            decide=self._decider(now, server),
            waiting=self.books.waiting,
            may_update=self.guard.allows,
            creating=self._echoes.expect,
            unchanged=lambda res, observed: self._memo.unchanged(res, observed, server),
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
                consumers = await self.consumers.after_pass(
                    self._broker,
                    config=self.config,
                    declared=self._managed,
                    batch=batch,
                    backoff=self.backoff,
                    listed=result.listed,
                    seen=result.seen,
                )
            for stream in result.skipped:
                self._deferred.setdefault(stream, batch.streams.get(stream, Trigger.RETRY))
            report = replace(
                self.books.book(result),
                consumers=tuple(consumers),
                consumers_missing=self.consumers.missing(self.config),
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the worker itself is stopping
            report = replace(head, finished=self.clock(), cut=Cut.LOST)
            self._memo.clear()  # what it decided was never reported
        except TimeoutError:
            self.backoff.failed(EVERYTHING, transient=True)
            report = replace(head, finished=self.clock(), cut=Cut.DEADLINE)
            self._memo.clear()
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

    def _decider(
        self, now: datetime, server: ServerInfo
    ) -> Callable[[Resource, Observed | None], Decision]:
        def planned(res: Resource, observed: Observed | None) -> Decision:
            mine = self._own_hashes.get(res.stream, frozenset())
            return self.decide(res, observed, now, own_hashes=mine, server=server)

        def decide(res: Resource, observed: Observed | None) -> Decision:
            return self._memo.decide(res, observed, server, planned)

        return decide
