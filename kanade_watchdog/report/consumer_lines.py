"""The log and journal lines of a pass's declared consumers.

`outcomes.OutcomeLog` hands each `reports.ConsumerDone` here with its
`failures.FailureMemory`: one INFO line per action (created, resumed at a
stream sequence, updated with the diff), a WARNING for a failure once per
error code with when it is tried again (a transient one only once it has
lasted, debug lines meanwhile), "in sync again" after a failure that was
said, and a WARNING for a blocked or newer-spec consumer once per reason. The fields are
the streams' (`logs.fields`: KANADE_* and MESSAGE_ID in the journal), with
kind `consumer` and the resource named `STREAM/DURABLE`, which no stream
name can be: the memory's keys cannot collide.
"""

from __future__ import annotations

import logging

from kanade_watchdog.core.reports import ConsumerDone
from kanade_watchdog.core.result import Result
from kanade_watchdog.model.consumers import CONSUMER_KIND
from kanade_watchdog.model.events import Event
from kanade_watchdog.report.failures import FailureMemory
from kanade_watchdog.report.logs import fields

log = logging.getLogger("kanade_watchdog.consumers")

_EVENT = {
    Result.CREATED: Event.CREATED,
    Result.UPDATED: Event.UPDATED,
    Result.BLOCKED: Event.BLOCKED,
    Result.NEWER_SPEC: Event.NEWER_SPEC,
    Result.FAILED: Event.FAILED,
}


def say(done: ConsumerDone, memory: FailureMemory) -> None:
    """At most one line for one consumer's outcome."""
    o, d = done.outcome, done.outcome.decision
    name = d.consumer.name
    if o.result is Result.FAILED:
        _failed(done, memory)
        return
    if o.result in (Result.CREATED, Result.UPDATED, Result.IN_SYNC):
        was = memory.cleared(name)
        if o.result is Result.IN_SYNC:
            if was is not None:
                log.info(
                    "consumer %s is in sync again",
                    name,
                    extra=_fields(done, Event.RECOVERED),
                )
            return
    if o.result in (Result.BLOCKED, Result.NEWER_SPEC) and not memory.standing(name, d.reason):
        return  # said once per change, as a stream's: not again every resync
    event = _EVENT[o.result]
    diff = "; ".join(str(c) for c in d.changes)
    extra = _fields(done, event, diff=diff, resumed_from=d.resume_from)
    if o.result is Result.CREATED and d.resume_from is not None:
        log.info(
            "consumer %s: created, resumed at stream sequence %d", name, d.resume_from, extra=extra
        )
    elif o.result is Result.CREATED:
        log.info("consumer %s: created", name, extra=extra)
    elif o.result is Result.UPDATED:
        log.info("consumer %s: updated (%s)", name, diff, extra=extra)
    else:
        log.warning("consumer %s: %s (%s)", name, o.result, d.reason, extra=extra)


def _failed(done: ConsumerDone, memory: FailureMemory) -> None:
    o = done.outcome
    name = o.decision.consumer.name
    if not memory.failing(name, o.code or o.error, transient=o.transient):
        log.debug("consumer %s failing: %s (retry in %.2fs)", name, o.error, done.delay)
        return
    diff = "; ".join(str(c) for c in o.decision.changes)
    log.warning(
        "consumer %s: failed: %s (%s; retry in %.1fs; trigger %s)",
        name,
        o.error,
        "transient" if o.transient else "permanent",
        done.delay,
        done.trigger,
        extra=_fields(done, Event.FAILED, diff=diff, error=o.error),
    )


def _fields(done: ConsumerDone, event: Event, **more: object) -> dict[str, object]:
    c = done.outcome.decision.consumer
    return fields(
        resource=c.name,
        stream=c.stream,
        kind=CONSUMER_KIND,
        action=event,
        message_id=event,
        trigger=done.trigger,
        **more,
    )
