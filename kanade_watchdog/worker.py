"""The one reconcile worker, and the work queue every trigger feeds.

Triggers (startup, the resync timer, reconnects, advisories, reloads,
retries) only MARK work: "everything" or "these streams". The single worker
drains the marks into passes, so a burst of events becomes a handful of
passes and passes never overlap. A full pass reads the broker with the paged
stream list; a partial pass reads just the marked streams. Writes happen
only for decisions that need them, so an in-sync broker sees none, and the
UPDATED advisory our own update causes ends in a read.
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

from . import desired
from .apply import Outcome, Result, execute, kind_word
from .backoff import Backoff
from .broker import Broker
from .cluster import cluster_facts
from .config import Config, Resource
from .errors import BrokerError, BrokerUnavailable
from .events import Event, Trigger
from .logs import fields
from .order import execute_in_waves
from .plan import Action, Decision, Observed, decide
from .status import StatusBoard

log = logging.getLogger("kanade_watchdog.worker")

EVERYTHING = "*"  # the backoff key of a failed full read
TRANSIENT_QUIET = 15.0  # seconds a transient failure stays at debug level (elections)
CONFLICT_WARN_EVERY = 300.0
_REASONED = (Result.BLOCKED, Result.NEWER_SPEC, Result.FAILED)
NO_LEADER = BrokerUnavailable("no leader answers for this stream right now")


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
    def __init__(
        self,
        config: Config,
        *,
        board: StatusBoard,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self.managed = frozenset(config.by_stream())
        self.board = board
        self.queue = WorkQueue()
        self.clock = clock
        self.now = now
        self.backoff = self._new_backoff()
        self.broker: Broker | None = None
        self.connected = asyncio.Event()
        self.passes = 0
        self.busy_since: float | None = None  # set while a pass runs (watchdog)
        self.idle = asyncio.Event()  # clear while a pass runs (graceful stop)
        self.idle.set()
        self.wedge: asyncio.Event | None = None  # test hook: hold the next pass
        self._current: asyncio.Future[None] | None = None  # the pass in flight
        self._failures: dict[str, str] = {}  # stream -> last failure text, to log once
        self._failing_since: dict[str, float] = {}
        self.own_hashes: dict[str, frozenset[str]] = {}
        self._conflict_warned: dict[str, float] = {}

    def _new_backoff(self) -> Backoff:
        w = self.config.watchdog
        return Backoff(
            initial=w.backoff_initial,
            maximum=w.backoff_max,
            permanent=w.permanent_retry,
            clock=self.clock,
        )

    # --- connection and config, from the daemon ---------------------------------

    def attach(self, broker: Broker, trigger: Trigger | None = None) -> None:
        """A (new) connection: requests that died with the old one are retried
        now, not when their backoff says, and `trigger` marks everything."""
        self.broker = broker
        self.backoff.forget_transient()
        self.connected.set()
        if trigger is not None:
            self.queue.mark_all(trigger)

    def detach(self) -> None:
        """The connection is lost: requests in flight can only time out now,
        so the pass waiting on them is cut short; the reconnect's full pass
        redoes whatever it had not finished."""
        self.connected.clear()
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
        self.managed = frozenset(config.by_stream())
        self.backoff = self._new_backoff()
        self._failures.clear()
        self.board.declare(config.resources)
        self.queue.mark_all(Trigger.RELOAD)

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
            batch = self.queue.take()
            if not batch:
                continue
            if not self.connected.is_set():
                # Nothing to do until the reconnect callback marks everything.
                await self.connected.wait()
                continue
            await self.run_pass(batch)

    async def run_pass(self, batch: Batch) -> None:
        self.busy_since = self.clock()
        self.idle.clear()
        try:
            if self.wedge is not None:
                await _wedged(self.wedge)
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
            self.busy_since = None
            self.idle.set()
            self.passes += 1
            self.board.pass_done(self.clock())

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
            self.board.cluster(cluster_facts(config.resources, observed))
            for res in config.resources:
                trigger = batch.streams.get(res.stream)
                if trigger is None and not self.backoff.due(res.stream):
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
                    decisions.append((self._decide(res, info, now), trigger))
        # An origin is written before the streams that mirror or source it.
        outcomes = await execute_in_waves(
            [d for d, _ in decisions], lambda d: execute(broker, d, config.resources, now)
        )
        for (_, trigger), outcome in zip(decisions, outcomes, strict=True):
            self._record(outcome, trigger)
        in_sync = sum(o.result is Result.IN_SYNC for o in outcomes)
        log.debug(
            "pass (%s): %d looked at, %d in sync", batch.full or "events", len(outcomes), in_sync
        )

    def _decide(self, res: Resource, observed: Observed | None, now: datetime) -> Decision:
        return decide(
            res,
            observed,
            now,
            own_hashes=self.own_hashes.get(res.stream, frozenset()),
            server=self.broker.server if self.broker else None,
        )

    @staticmethod
    async def _info(broker: Broker, res: Resource) -> Observed | BrokerError | None:
        try:
            return await broker.stream_info(res.stream)
        except BrokerError as exc:
            return exc

    def _read_failed(self, exc: BrokerError) -> None:
        delay = self.backoff.failed(EVERYTHING, transient=exc.transient)
        text = str(exc)
        since = self._failing_since.setdefault(EVERYTHING, self.clock())
        quiet = exc.transient and self.clock() - since < TRANSIENT_QUIET  # an election
        if quiet or self._failures.get(EVERYTHING) == text:
            log.debug("cannot read the broker's streams: %s (retry in %.2fs)", text, delay)
            return
        self._failures[EVERYTHING] = text
        log.warning(
            "cannot read the broker's streams: %s (retry in %.1fs)",
            text,
            delay,
            extra=fields(action=Event.FAILED, message_id=Event.FAILED),
        )

    def _read_ok(self) -> None:
        self.backoff.succeeded(EVERYTHING)
        self._failing_since.pop(EVERYTHING, None)
        if self._failures.pop(EVERYTHING, None) is not None:
            log.info(
                "the broker's streams are readable again",
                extra=fields(action=Event.RECOVERED, message_id=Event.RECOVERED),
            )

    # --- recording outcomes: one line per action, failures once per change -----------

    def _record(self, outcome: Outcome, trigger: Trigger) -> None:
        d = outcome.decision
        res = d.resource
        present = (
            d.present
            if d.present is not None
            else (
                d.action is not Action.CREATE and not (d.action is Action.BLOCKED and not d.changes)
            )
        )
        common = {
            "resource": res.name,
            "stream": res.stream,
            "kind": str(res.kind),
            "trigger": str(trigger),
        }
        what = f"{kind_word(res.kind)} {res.name}"
        if outcome.result is Result.FAILED:
            assert outcome.error is not None
            self._record_failure(res, outcome.error, trigger, present=present)
            return
        self.backoff.succeeded(res.stream)
        self._failing_since.pop(res.stream, None)
        was = self._failures.pop(res.stream, None)
        diff = "; ".join(str(c) for c in d.changes)
        if outcome.result is Result.CREATED:
            log.info(
                "created %s (trigger %s)",
                what,
                trigger,
                extra=fields(action=Event.CREATED, message_id=Event.CREATED, **common),
            )
            self.board.healed(res, self.clock())
        elif outcome.result is Result.UPDATED:
            log.info(
                "updated %s: %s (trigger %s)",
                what,
                diff,
                trigger,
                extra=fields(action=Event.UPDATED, message_id=Event.UPDATED, diff=diff, **common),
            )
            for stake in d.at_stake:
                log.warning(
                    "%s: stored data affected by the update: %s",
                    what,
                    stake,
                    extra=fields(action=Event.UPDATED, **common),
                )
            self.board.healed(res, self.clock())
        elif outcome.result is Result.BLOCKED:
            self._failures[res.stream] = d.reason
            if d.conflict:
                self._warn_conflict(what, d.reason, diff, common)
            elif was != d.reason:
                log.warning(
                    "blocked %s: %s%s (trigger %s)",
                    what,
                    d.reason,
                    "".join(f"; {c}" for c in d.changes),
                    trigger,
                    extra=fields(
                        action=Event.BLOCKED, message_id=Event.BLOCKED, diff=diff, **common
                    ),
                )
        elif outcome.result is Result.NEWER_SPEC:
            self._failures[res.stream] = d.reason
            if was != d.reason:
                log.warning(
                    "%s: %s (trigger %s)",
                    what,
                    d.reason,
                    trigger,
                    extra=fields(action=Event.NEWER_SPEC, message_id=Event.NEWER_SPEC, **common),
                )
        elif was is not None:
            log.info(
                "%s is in sync again",
                what,
                extra=fields(action=Event.RECOVERED, message_id=Event.RECOVERED, **common),
            )
        self.board.set(
            res,
            outcome.result,
            present=present,
            reason=d.reason if outcome.result in _REASONED else "",
        )

    def _warn_conflict(self, what: str, reason: str, diff: str, common: dict[str, str]) -> None:
        """Two configs with one spec_version fight over a resource: loud, but at
        most once per CONFLICT_WARN_EVERY, and never a write."""
        now = self.clock()
        last = self._conflict_warned.get(common["stream"])
        if last is not None and now - last < CONFLICT_WARN_EVERY:
            return
        self._conflict_warned[common["stream"]] = now
        log.error(
            "conflict on %s: %s (%s)",
            what,
            reason,
            diff,
            extra=fields(action=Event.BLOCKED, message_id=Event.BLOCKED, diff=diff, **common),
        )

    def _record_failure(
        self, res: Resource, error: Exception, trigger: Trigger, *, present: bool | None = None
    ) -> None:
        transient = bool(getattr(error, "transient", True))
        delay = self.backoff.failed(res.stream, transient=transient)
        text = str(error)
        since = self._failing_since.setdefault(res.stream, self.clock())
        # Elections and restarts make requests fail for a few seconds; that is
        # not worth a warning unless it lasts.
        quiet = transient and self.clock() - since < TRANSIENT_QUIET
        # Same failure = same broker error code (its text may carry live
        # numbers, such as the storage other streams reserve right now).
        cause = getattr(error, "cause", error)
        key = (
            f"{type(cause).__name__}:{getattr(cause, 'err_code', '')}"
            if getattr(cause, "err_code", None)
            else text
        )
        if quiet or self._failures.get(res.stream) == key:
            log.debug("%s failing: %s (retry in %.2fs)", res.label, text, delay)
        else:
            self._failures[res.stream] = key
            log.warning(
                "failed %s %s: %s (%s; retry in %.1fs; trigger %s)",
                kind_word(res.kind),
                res.name,
                text,
                "transient" if transient else "permanent",
                delay,
                trigger,
                extra=fields(
                    action=Event.FAILED,
                    message_id=Event.FAILED,
                    resource=res.name,
                    stream=res.stream,
                    kind=str(res.kind),
                    trigger=str(trigger),
                    error=text,
                ),
            )
        self.board.set(res, Result.FAILED, present=present, reason=text)


async def _wedged(release: asyncio.Event) -> None:
    """Test hook: a pass stuck in a call that ignores cancellation, the way a
    hung broker call would look. Only `release` ends it."""
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            continue
