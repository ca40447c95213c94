"""The one reconcile worker, and the work queue every trigger feeds.

Triggers (startup, the resync timer, reconnects, advisories, reloads,
retries) only MARK work: "everything" or "these streams". The single worker
drains the marks into passes, so a burst of events becomes a handful of
passes and passes never overlap. A full pass reads the broker with the paged
stream list; a partial pass reads just the marked streams. Writes happen
only for decisions that need them, so an in-sync broker sees none, and the
UPDATED advisory our own update causes ends in a read. A resource just
written is looked at once more shortly after (the broker may drop the
advisory of a delete that follows at once), and one updated too often is
held by `guard.WriteGuard` instead of written in a loop. A permanent
failure is retried early when what it depended on changes (`causes`).
`daemon` owns the connection and hands the worker a `Broker`; the worker
reports to `status.StatusBoard` after each pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from kanade_watchdog.broker.apply import execute
from kanade_watchdog.core import causes, desired, plan
from kanade_watchdog.core.cluster import cluster_facts
from kanade_watchdog.core.outcome import Outcome, Result
from kanade_watchdog.core.plan import Action, Decision, Observed
from kanade_watchdog.core.ports import Broker
from kanade_watchdog.daemon.backoff import Backoff
from kanade_watchdog.daemon.guard import WriteGuard
from kanade_watchdog.model.errors import BrokerError, BrokerUnavailable
from kanade_watchdog.model.events import Trigger
from kanade_watchdog.model.resources import Resource
from kanade_watchdog.model.settings import Config
from kanade_watchdog.report.outcomes import EVERYTHING, OutcomeLog, present_after
from kanade_watchdog.report.outcomes import TRANSIENT_QUIET as TRANSIENT_QUIET  # noqa: PLC0414 - re-exported
from kanade_watchdog.report.status import StatusBoard

log = logging.getLogger("kanade_watchdog.worker")

NO_LEADER = BrokerUnavailable("no leader answers for this stream right now")
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
    ) -> Decision: ...


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class Batch:
    full: Trigger | None = None
    streams: dict[str, Trigger] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.full is not None or bool(self.streams)


class WorkQueue:
    """Marks from any trigger; `take()` hands the worker everything marked so far."""

    def __init__(self) -> None:
        self._pending = Batch()
        self._wake = asyncio.Event()
        self.marks = 0  # how many marks were made (coalescing is marks vs passes)

    def mark_all(self, trigger: Trigger) -> None:
        self.marks += 1
        if self._pending.full is None:
            self._pending.full = trigger
        self._wake.set()

    def mark(self, stream: str, trigger: Trigger) -> None:
        # Even a DELETED advisory leads to a read before the create: anyone may
        # publish on the advisory subjects, and an in-sync stream is never written.
        self.marks += 1
        self._pending.streams.setdefault(stream, trigger)
        self._wake.set()

    async def wait(self, at_most: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), at_most)

    def take(self) -> Batch:
        batch, self._pending = self._pending, Batch()
        self._wake.clear()
        return batch


class Worker:
    """The one reconciler. The daemon talks to it only through the methods
    below: marks, the connection (attach/detach), reloads, and the
    questions the watchdog and a graceful stop ask (stuck_for, wait_idle)."""

    def __init__(
        self,
        config: Config,
        *,
        board: StatusBoard,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
        decide: Decide = plan.decide,
    ) -> None:
        self.config = config
        self.decide = decide
        self.managed = frozenset(config.by_stream())
        self.board = board
        self.queue = WorkQueue()
        self.clock = clock
        self.now = now
        self.backoff = self._new_backoff()
        self.broker: Broker | None = None
        self.generation = 0  # how many reloads: a pass runs on one config
        self._passes = 0
        self._connected = asyncio.Event()
        self._busy_since: float | None = None  # set while a pass runs (watchdog)
        self._idle = asyncio.Event()  # clear while a pass runs (graceful stop)
        self._idle.set()
        self._current: asyncio.Future[None] | None = None  # the pass in flight
        self.told = OutcomeLog(board, clock=clock)
        self.own_hashes: dict[str, frozenset[str]] = {}
        self.guard = WriteGuard(clock)
        # The broker as last seen: a full pass's list, then each read and write.
        self.view: dict[str, Observed] = {}
        self._causes: dict[str, causes.Cause] = {}  # stream -> why it failed for good

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
            await asyncio.wait_for(self._idle.wait(), within)
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
        self.broker = broker
        self.backoff.forget_transient()
        self._connected.set()
        if trigger is not None:
            self.queue.mark_all(trigger)

    def detach(self) -> None:
        """The connection is lost: requests in flight can only time out now,
        so the pass waiting on them is cut short; the reconnect's full pass
        redoes whatever it had not finished."""
        self._connected.clear()
        if self._current is not None and not self._current.done():
            self._current.cancel()

    def reload(self, config: Config) -> None:
        """Swap the declaration; everything is looked at again, from scratch."""
        # What the previous config wrote is this process's own work: an edit
        # made without raising spec_version replaces it instead of being
        # mistaken for another watchdog's.
        for res in self.config.resources:
            mine = self.own_hashes.get(res.stream, frozenset())
            self.own_hashes[res.stream] = mine | {desired.spec_hash(res)}
        self.config = config
        self.generation += 1
        self.managed = frozenset(config.by_stream())
        self.backoff = self._new_backoff()
        self.guard.reset()
        self._causes.clear()
        self.told.forget()
        self.board.declare(config.resources)
        self.queue.mark_all(Trigger.RELOAD)

    def advisory(self, stream: str) -> None:
        """A stream changed on the broker: look at it if declared, and at every
        resource whose permanent failure depends on it."""
        if stream in self.managed:
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
            await self.run_pass(batch)

    async def run_pass(self, batch: Batch) -> None:
        self._busy_since = self.clock()
        self._idle.clear()
        generation = self.generation
        try:
            self._current = asyncio.ensure_future(self._reconcile(batch))
            await asyncio.wait_for(self._current, self.config.watchdog.pass_deadline)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the worker itself is stopping
            log.debug("pass cut short: the connection was lost")
        except TimeoutError:
            log.warning(
                "reconcile pass exceeded its %gs deadline; retrying",
                self.config.watchdog.pass_deadline,
            )
            self.backoff.failed(EVERYTHING, transient=True)
        finally:
            self._busy_since = None
            self._idle.set()
            self._passes += 1
            self.board.pass_done(self.clock(), generation)

    async def _reconcile(self, batch: Batch) -> None:
        assert self.broker is not None
        broker, config = self.broker, self.config
        by_stream = config.by_stream()
        decisions: list[tuple[Decision, Trigger]] = []
        now = self.now()
        if batch.full is not None:
            try:
                observed = await broker.list_streams()
            except BrokerError as exc:
                self._read_failed(exc)
                return
            self._read_ok()
            self.view = dict(observed)
            self.board.cluster(cluster_facts(config.resources, observed))
            for res in config.resources:
                trigger = batch.streams.get(res.stream)
                if trigger is None and not self.backoff.due(res.stream):
                    cause = self._causes.get(res.stream)
                    if cause is None or not causes.changed(res, cause, observed):
                        continue  # still backing off; an event would bring it in early
                obs = observed.get(res.stream)
                if obs is not None and obs.leaderless:
                    # An election, not a fault of this resource: retry quietly.
                    self._record_failure(res, NO_LEADER, trigger or batch.full, present=True)
                    continue
                decisions.append((self._decide(res, obs, now), trigger or batch.full))
        else:
            targets = [(by_stream[s], t) for s, t in batch.streams.items() if s in by_stream]
            infos = await asyncio.gather(*(self._info(broker, r) for r, _ in targets))
            for (res, trigger), info in zip(targets, infos, strict=True):
                if isinstance(info, BrokerError):
                    self._record_failure(res, info, trigger)
                else:
                    self._saw(res.stream, info)
                    decisions.append((self._decide(res, info, now), trigger))
        held = [(d, t) for d, t in decisions if not self._may_write(d)]
        decisions = [(d, t) for d, t in decisions if self._may_write(d)]
        for decision, trigger in held:
            self._not_converging(decision, trigger)
        outcomes = await asyncio.gather(
            *(execute(broker, d, config.resources, now) for d, _ in decisions)
        )
        for (_, trigger), outcome in zip(decisions, outcomes, strict=True):
            self._record(outcome, trigger)
        in_sync = sum(o.result is Result.IN_SYNC for o in outcomes)
        log.debug(
            "pass (%s): %d looked at, %d in sync",
            batch.full or "events",
            len(outcomes) + len(held),
            in_sync,
        )

    def _decide(self, res: Resource, observed: Observed | None, now: datetime) -> Decision:
        return self.decide(
            res, observed, now, own_hashes=self.own_hashes.get(res.stream, frozenset())
        )

    def _saw(self, stream: str, observed: Observed | None) -> None:
        if observed is None:
            self.view.pop(stream, None)
        else:
            self.view[stream] = observed

    def _may_write(self, decision: Decision) -> bool:
        return decision.action is not Action.UPDATE or self.guard.allows(decision.resource.stream)

    def _not_converging(self, decision: Decision, trigger: Trigger) -> None:
        """An update refused by the guard: reported, held until the window passes."""
        stream = decision.resource.stream
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
        self.told.not_converging(decision, trigger, reason=reason, first=first, wait=wait)

    @staticmethod
    async def _info(broker: Broker, res: Resource) -> Observed | BrokerError | None:
        try:
            return await broker.stream_info(res.stream)
        except BrokerError as exc:
            return exc

    def _read_failed(self, exc: BrokerError) -> None:
        delay = self.backoff.failed(EVERYTHING, transient=exc.transient)
        self.told.read_failed(exc, delay)

    def _read_ok(self) -> None:
        self.backoff.succeeded(EVERYTHING)
        self.told.read_ok()

    # --- bookkeeping of outcomes (`outcome_log` says them) -------------------------------

    def _record(self, outcome: Outcome, trigger: Trigger) -> None:
        res = outcome.decision.resource
        if outcome.result is Result.FAILED:
            assert outcome.error is not None
            present = present_after(outcome.decision)
            self._record_failure(res, outcome.error, trigger, present=present)
            return
        self.backoff.succeeded(res.stream)
        self._causes.pop(res.stream, None)
        if outcome.result in (Result.CREATED, Result.UPDATED):
            if outcome.observed is not None:
                self._saw(res.stream, outcome.observed)
            if outcome.result is Result.UPDATED:
                self.guard.wrote(res.stream)
            self.backoff.recheck(res.stream, REVERIFY_AFTER)
            self._wake_dependents(res.stream, Trigger.RETRY)  # we changed what they wait on
        elif outcome.result is Result.IN_SYNC:
            self.guard.converged(res.stream)
        self.told.outcome(outcome, trigger)

    def _record_failure(
        self, res: Resource, error: Exception, trigger: Trigger, *, present: bool | None = None
    ) -> None:
        transient = bool(getattr(error, "transient", True))
        delay = self.backoff.failed(res.stream, transient=transient)
        if transient:
            self._causes.pop(res.stream, None)
        else:
            self._causes[res.stream] = causes.cause_of(res, error, self.view)
        self.told.failed(res, error, trigger, delay=delay, present=present)
