"""The log and journal reporter: what the daemon tells the operator.

A `ports.Reporter`: every pass report, connection change and reload
becomes at most one log line per fact, with its structured fields
(`logs.fields`: the journal's KANADE_* and MESSAGE_ID, JSON keys). One INFO
line per action taken (created, updated with the diff), a WARNING for a
failure once per change (`failures.FailureMemory`: the same broker error
repeated is said at debug level, a transient one only once it has lasted),
an ERROR for an update that never converges, and a debug summary per pass.
The declared consumers' lines are `consumer_lines`', on the same memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kanade_watchdog.core.ports import Quiet
from kanade_watchdog.core.reports import (
    BrokerState,
    Cut,
    Done,
    Failed,
    Held,
    LinkState,
    PassReport,
    ReadFailure,
    Reloaded,
)
from kanade_watchdog.core.result import Result
from kanade_watchdog.model.events import Event, Trigger
from kanade_watchdog.model.resources import Resource, kind_word
from kanade_watchdog.report import consumer_lines
from kanade_watchdog.report.failures import FailureMemory
from kanade_watchdog.report.logs import fields

log = logging.getLogger("kanade_watchdog.worker")

EVERYTHING = "*"  # the memory's key for the broker's stream list
CONFLICT_WARN_EVERY = 300.0


def _common(res: Resource, trigger: Trigger) -> dict[str, str]:
    return {"resource": res.name, "stream": res.stream, "kind": str(res.kind), "trigger": trigger}


def _failure_key(error: Exception) -> str:
    """Same failure = same broker error code (its text may carry live
    numbers, such as the storage other streams reserve right now)."""
    cause = getattr(error, "cause", error)
    code = getattr(cause, "err_code", None)
    return f"{type(cause).__name__}:{code}" if code else str(error)


class OutcomeLog(Quiet):
    def __init__(self, *, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.memory = FailureMemory(clock)
        self._conflict_warned: dict[str, float] = {}

    # --- the connection and reloads ---------------------------------------------------

    def broker(self, state: BrokerState) -> None:
        if state.state is LinkState.CONNECTING:
            log.info(
                "connecting to %s",
                state.servers,
                extra=fields(action=Event.WAITING, message_id=Event.WAITING),
            )
        elif state.state is LinkState.UP:
            log.info(
                "broker back (%s); full resync" if state.resumed else "connected to %s",
                state.url,
                extra=fields(action=Event.BROKER_BACK, message_id=Event.BROKER_BACK),
            )
        else:
            log.warning(
                "broker lost (%s); reconnecting",
                state.servers,
                extra=fields(action=Event.BROKER_LOST, message_id=Event.BROKER_LOST),
            )

    def reloaded(self, result: Reloaded) -> None:
        if not result.ok:
            log.error(
                "reload refused, still running the previous config: %s",
                " | ".join(result.problems),
                extra=fields(
                    action=Event.RELOAD_FAILED,
                    message_id=Event.RELOAD_FAILED,
                    trigger=Trigger.RELOAD,
                ),
            )
            return
        self.memory.forget()
        log.info(
            "reloaded %s: %d resources",
            result.path,
            result.resources,
            extra=fields(action=Event.RELOADED, message_id=Event.RELOADED, trigger=Trigger.RELOAD),
        )

    # --- a pass -----------------------------------------------------------------------

    def pass_done(self, report: PassReport) -> None:
        if report.read_error is not None:
            self._read_failed(report.read_error)
        elif report.listed is not None:
            self._read_ok()
        for failed in report.failed:
            self._failed(failed)
        for held in report.held:
            self._held(held)
        for done in report.done:
            self._done(done)
        for consumer in report.consumers:
            consumer_lines.say(consumer, self.memory)
        if report.cut is Cut.DEADLINE:
            log.warning("reconcile pass exceeded its %gs deadline; retrying", report.deadline)
        elif report.cut is Cut.LOST:
            log.debug("pass cut short: the connection was lost")
        elif report.read_error is None and log.isEnabledFor(logging.DEBUG):
            # Counting a 10,000-resource pass's outcomes is not free; only when said.
            log.debug(
                "pass (%s): %d looked at, %d in sync",
                report.label,
                report.looked,
                report.in_sync,
                extra=fields(
                    trigger=report.label,
                    scope=report.scope,
                    looked=report.looked,
                    in_sync=report.in_sync,
                ),
            )

    def _read_failed(self, failure: ReadFailure) -> None:
        text = str(failure.error)
        if not self.memory.failing(EVERYTHING, text, transient=failure.transient):
            log.debug("cannot read the broker's streams: %s (retry in %.2fs)", text, failure.delay)
            return
        log.warning(
            "cannot read the broker's streams: %s (retry in %.1fs)",
            text,
            failure.delay,
            extra=fields(action=Event.FAILED, message_id=Event.FAILED),
        )

    def _read_ok(self) -> None:
        if self.memory.cleared(EVERYTHING) is not None:
            log.info(
                "the broker's streams are readable again",
                extra=fields(action=Event.RECOVERED, message_id=Event.RECOVERED),
            )

    def _done(self, done: Done) -> None:
        """Anything but a failure."""
        d = done.outcome.decision
        res, trigger = d.resource, done.trigger
        result = done.result
        if result is Result.IN_SYNC and self.memory.cleared(res.stream) is None:
            return  # a resync's common case: nothing to say, nothing to build for it
        # In sync now, it had failed before: the memory said so and is clear.
        recovered = result is Result.IN_SYNC
        common = _common(res, trigger)
        what = f"{kind_word(res.kind)} {res.name}"
        diff = "; ".join(str(c) for c in d.changes)
        if result in (Result.BLOCKED, Result.NEWER_SPEC):
            news = self.memory.standing(res.stream, d.reason)
            if result is Result.BLOCKED and d.conflict:
                self._warn_conflict(what, d.reason, diff, common)
            elif news and result is Result.BLOCKED:
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
            elif news:
                log.warning(
                    "%s: %s (trigger %s)",
                    what,
                    d.reason,
                    trigger,
                    extra=fields(action=Event.NEWER_SPEC, message_id=Event.NEWER_SPEC, **common),
                )
            return
        self.memory.cleared(res.stream)  # a write: whatever was failing is fixed
        if result is Result.CREATED:
            log.info(
                "created %s (trigger %s)",
                what,
                trigger,
                extra=fields(action=Event.CREATED, message_id=Event.CREATED, **common),
            )
        elif result is Result.UPDATED:
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
        elif recovered:
            log.info(
                "%s is in sync again",
                what,
                extra=fields(action=Event.RECOVERED, message_id=Event.RECOVERED, **common),
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

    def _failed(self, failed: Failed) -> None:
        res, text = failed.resource, str(failed.error)
        if not self.memory.failing(
            res.stream, _failure_key(failed.error), transient=failed.transient
        ):
            log.debug("%s failing: %s (retry in %.2fs)", res.label, text, failed.delay)
            return
        log.warning(
            "failed %s %s: %s (%s; retry in %.1fs; trigger %s)",
            kind_word(res.kind),
            res.name,
            text,
            "transient" if failed.transient else "permanent",
            failed.delay,
            failed.trigger,
            extra=fields(
                action=Event.FAILED,
                message_id=Event.FAILED,
                error=text,
                **_common(res, failed.trigger),
            ),
        )

    def _held(self, held: Held) -> None:
        """An update the write guard refused: one ERROR line per episode."""
        res = held.decision.resource
        self.memory.standing(res.stream, "not converging")
        if not held.first:
            log.debug("%s still not converging; held for %.1fs", res.label, held.wait)
            return
        diff = "; ".join(str(c) for c in held.decision.changes)
        log.error(
            "%s %s is %s; wanted: %s (trigger %s)",
            kind_word(res.kind),
            res.name,
            held.reason,
            diff,
            held.trigger,
            extra=fields(
                action=Event.BLOCKED,
                message_id=Event.BLOCKED,
                diff=diff,
                **_common(res, held.trigger),
            ),
        )
