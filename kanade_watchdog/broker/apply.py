"""Carry out decisions on the broker, one resource at a time, never deleting.

Only `create` and `update` requests are ever sent: this module has no code
path to delete or purge. A failing resource never stops the others; its
broker error is turned into a `ResourceError` that says what to change.
Used by the one-shot `apply` command (`cli`) and by the daemon's `worker`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from datetime import datetime

from kanade_watchdog.core.causes import overlapping
from kanade_watchdog.core.outcome import Outcome, Result
from kanade_watchdog.core.plan import Action, Decision, decide, show
from kanade_watchdog.core.ports import Broker
from kanade_watchdog.model.errors import (
    ERR_IMMUTABLE_FIELD,
    ERR_INSUFFICIENT_MEMORY,
    ERR_INSUFFICIENT_STORAGE,
    ERR_NAME_IN_USE,
    ERR_REPLICAS_NOT_SUPPORTED,
    ERR_SUBJECTS_OVERLAP,
    ApiError,
    BrokerError,
    ResourceError,
)
from kanade_watchdog.model.resources import Resource
from kanade_watchdog.model.units import format_size


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
) -> ResourceError:
    """Turn a broker error into a one-line explanation for this resource;
    `creating` says the refused request was a create, not an update."""
    if not isinstance(error, ApiError):
        return ResourceError(resource.label, str(error), cause=error)
    code = error.err_code
    if code in (ERR_INSUFFICIENT_STORAGE, ERR_INSUFFICIENT_MEMORY):
        memory = code == ERR_INSUFFICIENT_MEMORY
        storage = "memory" if memory else "file"
        cap = format_size(resource.declared.get("max_bytes", -1))
        declared = format_size(_declared_storage_total(everything, storage))
        reserved = "unknown"
        with contextlib.suppress(BrokerError):
            info = await broker.account_info()
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
    if code == ERR_SUBJECTS_OVERLAP:
        return await _overlap(broker, resource, error, everything)
    if code == ERR_REPLICAS_NOT_SUPPORTED:
        return ResourceError(
            resource.label,
            "the broker has fewer servers than the declared replicas",
            cause=error,
        )
    return ResourceError(resource.label, str(error), cause=error)


async def _overlap(
    broker: Broker, resource: Resource, error: ApiError, everything: Sequence[Resource]
) -> ResourceError:
    """10065 does not say which stream overlaps: look at the broker's streams."""
    try:
        view = await broker.list_streams()
    except BrokerError:
        return ResourceError(
            resource.label,
            "its subjects overlap a stream this config does not declare; "
            "find it with `nats stream ls` and narrow one of them",
            cause=error,
        )
    names = overlapping(resource, view)
    if not names:
        gone = ResourceError(
            resource.label,
            "its subjects overlapped another stream's, which no longer overlap; retrying",
            cause=error,
        )
        gone.transient = True  # the cause is gone already
        return gone
    declared = {r.stream for r in everything}
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
    broker: Broker, decision: Decision, everything: Sequence[Resource], now: datetime
) -> Outcome:
    """Send the one write a decision asks for (none for in_sync/blocked)."""
    if decision.action is Action.IN_SYNC:
        return Outcome(decision, Result.IN_SYNC)
    if decision.action is Action.BLOCKED:
        return Outcome(decision, Result.BLOCKED)
    if decision.action is Action.NEWER_SPEC:
        return Outcome(decision, Result.NEWER_SPEC)
    assert decision.send is not None
    try:
        if decision.action is Action.CREATE:
            observed = await broker.create(decision.send)
            if not observed.did_create:
                # Another watchdog created it a moment ago: judge what is there.
                again = decide(decision.resource, observed, now)
                if again.action is Action.IN_SYNC:
                    return Outcome(again, Result.IN_SYNC, observed=observed)
                return await execute(broker, again, everything, now)
            return Outcome(decision, Result.CREATED, observed=observed)
        observed = await broker.update(decision.send)
        return Outcome(decision, Result.UPDATED, observed=observed)
    except ApiError as exc:
        if exc.err_code == ERR_NAME_IN_USE and decision.action is Action.CREATE:
            # Someone (another watchdog, the backend) created it between our
            # read and our write: look again instead of reporting an error.
            return await _reverify(broker, decision.resource, everything, now)
        creating = decision.action is Action.CREATE
        error = await explain(broker, decision.resource, exc, everything, creating=creating)
        return Outcome(decision, Result.FAILED, error=error)
    except BrokerError as exc:
        return Outcome(
            decision, Result.FAILED, error=await explain(broker, decision.resource, exc, everything)
        )


async def _reverify(
    broker: Broker, resource: Resource, everything: Sequence[Resource], now: datetime
) -> Outcome:
    try:
        observed = await broker.stream_info(resource.stream)
    except BrokerError as exc:
        return Outcome(
            decide(resource, None, now),
            Result.FAILED,
            error=await explain(broker, resource, exc, everything),
        )
    again = decide(resource, observed, now)
    if again.action is Action.CREATE:  # gone again already: let the caller retry
        gone = BrokerError("created and deleted by others while we looked")
        return Outcome(
            again, Result.FAILED, error=ResourceError(resource.label, str(gone), cause=gone)
        )
    return await execute(broker, again, everything, now)
