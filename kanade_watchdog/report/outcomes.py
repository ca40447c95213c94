"""What the worker tells the operator: one line per action, failures once per change.

`worker` decides and does the bookkeeping (backoff, guard, causes); this
module turns each outcome into at most one log line with its structured
fields (`logs.fields`, the journal's KANADE_* and MESSAGE_ID) and into the
resource's entry on the `status.StatusBoard`. A failure repeated with the
same broker error is logged at debug level; a transient one only once it
has lasted TRANSIENT_QUIET (elections make requests fail for a while).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kanade_watchdog.core.outcome import Outcome, Result
from kanade_watchdog.core.plan import Action, Decision
from kanade_watchdog.model.errors import BrokerError
from kanade_watchdog.model.events import Event, Trigger
from kanade_watchdog.model.resources import Resource, kind_word
from kanade_watchdog.report.logs import fields
from kanade_watchdog.report.status import StatusBoard

log = logging.getLogger("kanade_watchdog.worker")

EVERYTHING = "*"  # the key of a failed full read
TRANSIENT_QUIET = 15.0  # seconds a transient failure stays at debug level (elections)
CONFLICT_WARN_EVERY = 300.0
_REASONED = (Result.BLOCKED, Result.NEWER_SPEC, Result.FAILED)


def present_after(decision: Decision) -> bool:
    """Whether the resource exists on the broker, judging by the decision."""
    if decision.present is not None:
        return decision.present
    return decision.action is not Action.CREATE and not (
        decision.action is Action.BLOCKED and not decision.changes
    )


def _common(res: Resource, trigger: Trigger) -> dict[str, str]:
    return {"resource": res.name, "stream": res.stream, "kind": str(res.kind), "trigger": trigger}


class OutcomeLog:
    def __init__(self, board: StatusBoard, *, clock: Callable[[], float]) -> None:
        self.board = board
        self.clock = clock
        self._failures: dict[str, str] = {}  # stream -> last failure, to log it once
        self._failing_since: dict[str, float] = {}
        self._conflict_warned: dict[str, float] = {}

    def forget(self) -> None:
        """A reload: whatever was reported is reported again if it still holds."""
        self._failures.clear()

    # --- the broker's stream list ---------------------------------------------------

    def read_failed(self, exc: BrokerError, delay: float) -> None:
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

    def read_ok(self) -> None:
        self._failing_since.pop(EVERYTHING, None)
        if self._failures.pop(EVERYTHING, None) is not None:
            log.info(
                "the broker's streams are readable again",
                extra=fields(action=Event.RECOVERED, message_id=Event.RECOVERED),
            )

    # --- one resource ---------------------------------------------------------------

    def outcome(self, outcome: Outcome, trigger: Trigger) -> None:
        """Anything but a failure (see `failed`)."""
        d = outcome.decision
        res = d.resource
        common = _common(res, trigger)
        what = f"{kind_word(res.kind)} {res.name}"
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
            present=present_after(d),
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

    def failed(
        self,
        res: Resource,
        error: Exception,
        trigger: Trigger,
        *,
        delay: float,
        present: bool | None,
    ) -> None:
        transient = bool(getattr(error, "transient", True))
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
                    error=text,
                    **_common(res, trigger),
                ),
            )
        self.board.set(res, Result.FAILED, present=present, reason=text)

    def not_converging(
        self, decision: Decision, trigger: Trigger, *, reason: str, first: bool, wait: float
    ) -> None:
        """An update the write guard refused: one ERROR line per episode."""
        res = decision.resource
        self._failing_since.pop(res.stream, None)
        self._failures[res.stream] = "not converging"
        diff = "; ".join(str(c) for c in decision.changes)
        if first:
            log.error(
                "%s %s is %s; wanted: %s (trigger %s)",
                kind_word(res.kind),
                res.name,
                reason,
                diff,
                trigger,
                extra=fields(
                    action=Event.BLOCKED,
                    message_id=Event.BLOCKED,
                    diff=diff,
                    **_common(res, trigger),
                ),
            )
        else:
            log.debug("%s still not converging; held for %.1fs", res.label, wait)
        self.board.set(res, Result.BLOCKED, present=True, reason=reason)
