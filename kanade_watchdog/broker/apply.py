"""Carry out decisions on the broker, never deleting.

Only `create` and `update` requests are ever sent: this module has no code
path to delete or purge. A failing resource never stops the others; its
broker error is turned into a `ResourceError` that says what to change.
`execute` carries out one decision (the daemon's `worker` calls it);
`execute_all` carries out a whole plan with a bounded number of requests in
flight (the one-shot `apply` command, `cli`), and `in_waves` runs the
daemon's writes with the same bound (`daemon.reconcile`). A write whose answer does not
come in time is looked at again before it is called failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from kanade_watchdog.broker.api import NoAnswer
from kanade_watchdog.broker.pool import MAX_IN_FLIGHT, bounded
from kanade_watchdog.core.causes import overlapping
from kanade_watchdog.core.order import waves
from kanade_watchdog.core.outcome import Outcome
from kanade_watchdog.core.plan import Action, Decision, Observed, decide, show
from kanade_watchdog.core.ports import Broker
from kanade_watchdog.core.result import Result
from kanade_watchdog.model.errors import (
    ERR_IMMUTABLE_FIELD,
    ERR_INSUFFICIENT_MEMORY,
    ERR_INSUFFICIENT_STORAGE,
    ERR_NAME_IN_USE,
    ERR_PEDANTIC,
    ERR_REPLICAS_NOT_SUPPORTED,
    ERR_SUBJECTS_OVERLAP,
    ApiError,
    BrokerError,
    ResourceError,
)
from kanade_watchdog.model.resources import Resource
from kanade_watchdog.model.units import format_size

T = TypeVar("T")
T_in = TypeVar("T_in")


_WRITES = (Action.CREATE, Action.UPDATE)


class Lookups:
    """What explaining refusals reads, read once per `execute_all`: a
    thousand creates refused for overlapping subjects (10065) or for storage
    the broker cannot reserve (10047/10028) ask for the stream list or the
    account once, not once each. Explanations waiting at the same moment
    share the one request in flight; a failed read is kept too (the
    explanation then says what it could not find out)."""

    def __init__(self, broker: Broker, everything: Sequence[Resource]) -> None:
        self.broker = broker
        self.everything = everything
        self._lock = asyncio.Lock()
        self._read: dict[str, Any] = {}  # key -> value or the BrokerError it raised
        self._asked: dict[str, float] = {}  # key -> when it was last asked for
        self._declared: set[str] | None = None
        self._totals: dict[str, int] = {}

    async def _once(self, key: str, read: Callable[[], Awaitable[T]], *, newer_than: float) -> T:
        async with self._lock:
            if key not in self._read or self._asked[key] < newer_than:
                self._asked[key] = time.monotonic()
                try:
                    self._read[key] = await read()
                except BrokerError as exc:
                    self._read[key] = exc
        value = self._read[key]
        if isinstance(value, BrokerError):
            raise value
        result: T = value
        return result

    async def streams(self, *, newer_than: float = -math.inf) -> dict[str, Observed]:
        """The stream list; read again if the one kept was asked for before
        `newer_than` (a `time.monotonic()`), since it may predate a change."""
        return await self._once("streams", self.broker.list_streams, newer_than=newer_than)

    async def account(self) -> dict[str, Any]:
        return await self._once("account", self.broker.account_info, newer_than=-math.inf)

    def declared_streams(self) -> set[str]:
        if self._declared is None:
            self._declared = {r.stream for r in self.everything}
        return self._declared

    def declared_total(self, storage: str) -> int:
        """The declared max_bytes of one storage type, summed."""
        if storage not in self._totals:
            self._totals[storage] = _declared_storage_total(self.everything, storage)
        return self._totals[storage]


def _declared_storage_total(resources: Iterable[Resource], storage: str) -> int:
    total = 0
    for res in resources:
        cap = res.declared.get("max_bytes", -1)
        if cap > 0 and res.declared.get("storage", "file") == storage:
            total += cap
    return total


async def explain(
    broker: Broker,
    resource: Resource,
    error: BrokerError,
    everything: Sequence[Resource],
    *,
    creating: bool = False,
    lookups: Lookups | None = None,
) -> ResourceError:
    """Turn a broker error into a one-line explanation for this resource;
    `creating` says the refused request was a create, not an update.
    `lookups` shares what the explanation reads with the other resources
    of the same pass (by default it is read for this one alone)."""
    lookups = lookups or Lookups(broker, everything)
    if not isinstance(error, ApiError):
        return ResourceError(resource.label, str(error), cause=error)
    code = error.err_code
    if code in (ERR_INSUFFICIENT_STORAGE, ERR_INSUFFICIENT_MEMORY):
        memory = code == ERR_INSUFFICIENT_MEMORY
        storage = "memory" if memory else "file"
        cap = format_size(resource.declared.get("max_bytes", -1))
        declared = format_size(lookups.declared_total(storage))
        reserved = "unknown"
        with contextlib.suppress(BrokerError):
            info = await lookups.account()
            reserved = format_size(
                int(info.get("reserved_" + ("memory" if memory else "storage"), 0))
            )
        limit = "max_memory_store" if memory else "max_file_store"
        text = (
            f"the broker cannot reserve max_bytes {cap} of {storage} storage (declared "
            f"{storage} total {declared}, already reserved by existing streams {reserved}); "
            f"raise jetstream {limit} or free disk, or lower the cap"
        )
        return ResourceError(resource.label, text, cause=error)
    if code == ERR_IMMUTABLE_FIELD:
        # 10052 is the broker's "invalid stream config": on a create nothing
        # exists to change, so only the config itself can be at fault.
        text = (
            "the broker refuses to create it as declared"
            if creating
            else "the broker refuses this update (a field it cannot change in place, "
            "or a combination it does not allow)"
        )
        return ResourceError(resource.label, f"{text}: {error.description}", cause=error)
    if code == ERR_PEDANTIC:
        return ResourceError(
            resource.label,
            "the broker would adjust the declared config, and refuses instead (pedantic "
            f"request): {error.description}; declare the value it would set",
            cause=error,
        )
    if code == ERR_SUBJECTS_OVERLAP:
        return await _overlap(resource, error, lookups)
    if code == ERR_REPLICAS_NOT_SUPPORTED:
        return ResourceError(
            resource.label,
            "the broker has fewer servers than the declared replicas",
            cause=error,
        )
    return ResourceError(resource.label, str(error), cause=error)


async def _overlap(resource: Resource, error: ApiError, lookups: Lookups) -> ResourceError:
    """10065 does not say which stream overlaps: look at the broker's streams."""
    refused = time.monotonic()
    try:
        view = await lookups.streams()
        names = overlapping(resource, view)
        if not names:  # the list kept may predate the overlap: one read after the refusal
            view = await lookups.streams(newer_than=refused)
            names = overlapping(resource, view)
    except BrokerError:
        return ResourceError(
            resource.label,
            "its subjects overlap a stream this config does not declare; "
            "find it with `nats stream ls` and narrow one of them",
            cause=error,
        )
    if not names:
        gone = ResourceError(
            resource.label,
            "its subjects overlapped another stream's, which no longer overlap; retrying",
            cause=error,
        )
        gone.transient = True  # the cause is gone already
        return gone
    declared = lookups.declared_streams()
    parts = []
    for name in names[:3]:
        held = show("subjects", tuple(str(s) for s in view[name].config.get("subjects") or ()))
        if name in declared:
            parts.append(
                f"stream {name}, which this config declares but the broker holds with "
                f"subjects {held} (changed outside the watchdog; retried when {name} changes)"
            )
        else:
            parts.append(
                f"stream {name} (subjects {held}), which this config does not declare; "
                "narrow one of them"
            )
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ResourceError(
        resource.label,
        f"its subjects overlap {'; and '.join(parts)}{more}",
        cause=error,
        related=tuple(names),
    )


async def execute(
    broker: Broker,
    decision: Decision,
    everything: Sequence[Resource],
    now: datetime,
    *,
    lookups: Lookups | None = None,
) -> Outcome:
    """Send the one write a decision asks for (none for in_sync/blocked)."""
    return await _execute(broker, decision, lookups or Lookups(broker, everything), now)


async def execute_all(
    broker: Broker,
    decisions: Sequence[Decision],
    everything: Sequence[Resource],
    now: datetime,
    *,
    limit: int = MAX_IN_FLIGHT,
) -> list[Outcome]:
    """Every decision's write, at most `limit` resources in the broker's
    hands at once; the outcomes in the decisions' order. Decisions that
    need no write are answered without a request. An origin is written
    before the streams that mirror or source it (`order.waves`): a mirror
    created first waits ~10 s for the server's retry before it catches up."""
    lookups = Lookups(broker, everything)
    results: dict[int, Outcome] = {}
    for wave in waves(decisions):
        for decision, outcome in zip(
            wave, await _execute_wave(broker, wave, lookups, now, limit), strict=True
        ):
            results[id(decision)] = outcome
    return [results[id(d)] for d in decisions]


async def _execute_wave(
    broker: Broker, decisions: Sequence[Decision], lookups: Lookups, now: datetime, limit: int
) -> list[Outcome]:
    # Decisions that need no write are answered without taking a place in the pool.
    outcomes: list[Outcome | None] = [
        None if d.action in _WRITES else without_write(d) for d in decisions
    ]
    writes = [i for i, o in enumerate(outcomes) if o is None]

    async def write(i: int) -> Outcome:
        return await _execute(broker, decisions[i], lookups, now)

    for i, outcome in zip(writes, await bounded(writes, write, limit=limit), strict=True):
        outcomes[i] = outcome
    done = [o for o in outcomes if o is not None]
    assert len(done) == len(decisions)
    return done


def without_write(decision: Decision) -> Outcome:
    """The outcome of a decision that sends nothing (in sync, blocked, newer spec)."""
    if decision.action is Action.IN_SYNC:
        return Outcome(decision, Result.IN_SYNC)
    if decision.action is Action.BLOCKED:
        return Outcome(decision, Result.BLOCKED)
    if decision.action is Action.NEWER_SPEC:
        return Outcome(decision, Result.NEWER_SPEC)
    raise AssertionError(decision.action)


async def _execute(
    broker: Broker,
    decision: Decision,
    lookups: Lookups,
    now: datetime,
    *,
    look_again: bool = True,
) -> Outcome:
    """The write, or none; a write with no answer in time is looked at
    again (`_after_silence`) when `look_again`."""
    if decision.action not in _WRITES:
        return without_write(decision)
    assert decision.send is not None
    everything = lookups.everything
    try:
        if decision.action is Action.CREATE:
            observed = await broker.create(decision.send)
            if not observed.did_create:
                # Another watchdog created it a moment ago: judge what is there.
                again = decide(decision.resource, observed, now)
                if again.action is Action.IN_SYNC:
                    return Outcome(again, Result.IN_SYNC, observed=observed)
                return await _execute(broker, again, lookups, now, look_again=look_again)
            return Outcome(decision, Result.CREATED, observed=observed)
        observed = await broker.update(decision.send)
        return Outcome(decision, Result.UPDATED, observed=observed)
    except ApiError as exc:
        if exc.err_code == ERR_NAME_IN_USE and decision.action is Action.CREATE:
            # Someone (another watchdog, the backend) created it between our
            # read and our write: look again instead of reporting an error.
            return await _reverify(broker, decision.resource, lookups, now, look_again=look_again)
        creating = decision.action is Action.CREATE
        error = await explain(
            broker, decision.resource, exc, everything, creating=creating, lookups=lookups
        )
        return Outcome(decision, Result.FAILED, error=error)
    except NoAnswer as exc:
        if look_again:
            return await _after_silence(broker, decision, exc, lookups, now)
        return await _failed(broker, decision, exc, lookups)
    except BrokerError as exc:
        return await _failed(broker, decision, exc, lookups)


async def _failed(
    broker: Broker, decision: Decision, exc: BrokerError, lookups: Lookups
) -> Outcome:
    error = await explain(broker, decision.resource, exc, lookups.everything, lookups=lookups)
    return Outcome(decision, Result.FAILED, error=error)


async def _after_silence(
    broker: Broker, decision: Decision, silence: NoAnswer, lookups: Lookups, now: datetime
) -> Outcome:
    """No answer came in time, but the broker may have carried the write out
    (its late answer is dropped): read the stream and decide afresh. As
    declared now: the write was done. Still missing or still drifted: it
    failed. Changed otherwise meanwhile: the fresh decision is carried out,
    without a second look if it goes unanswered too."""
    try:
        observed = await broker.stream_info(decision.resource.stream)
    except BrokerError:
        return await _failed(broker, decision, silence, lookups)
    again = decide(decision.resource, observed, now)
    if again.action is Action.IN_SYNC:
        done = Result.CREATED if decision.action is Action.CREATE else Result.UPDATED
        return Outcome(decision, done, observed=observed)
    if again.action is decision.action:
        return await _failed(broker, decision, silence, lookups)
    return await _execute(broker, again, lookups, now, look_again=False)


async def _reverify(
    broker: Broker, resource: Resource, lookups: Lookups, now: datetime, *, look_again: bool
) -> Outcome:
    everything = lookups.everything
    try:
        observed = await broker.stream_info(resource.stream)
    except BrokerError as exc:
        return Outcome(
            decide(resource, None, now),
            Result.FAILED,
            error=await explain(broker, resource, exc, everything, lookups=lookups),
        )
    again = decide(resource, observed, now)
    if again.action is Action.CREATE:  # gone again already: let the caller retry
        gone = BrokerError("created and deleted by others while we looked")
        return Outcome(
            again, Result.FAILED, error=ResourceError(resource.label, str(gone), cause=gone)
        )
    return await _execute(broker, again, lookups, now, look_again=look_again)
