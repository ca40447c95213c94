"""What a permanent failure depended on, to tell when it may have changed.

A permanent failure (subjects overlapping another stream, storage that
cannot be reserved, a field the broker will not change) is retried only at
the slow `permanent_retry` pace. But its cause often lies in the broker's
state, not in the config: the overlapping stream is changed back, a capped
stream is deleted and frees its reservation, someone edits the stream
itself. `Cause` keeps the part of the broker's state the failure depended
on, as seen when it happened; a full pass that sees that part differently
retries the resource at once. The streams an error names (`related`) are
also watched for advisories by `worker`. Pure: observations in, values out.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from kanade_watchdog.core import desired
from kanade_watchdog.core.plan import Observed
from kanade_watchdog.model.errors import (
    ERR_INSUFFICIENT_MEMORY,
    ERR_INSUFFICIENT_STORAGE,
    ERR_SUBJECTS_OVERLAP,
)
from kanade_watchdog.model.resources import Resource
from kanade_watchdog.model.subjects import subjects_overlap


@dataclass(frozen=True)
class Cause:
    err_code: int  # the broker's error code (0: not an API error)
    related: tuple[str, ...]  # streams the error named
    seen: Hashable  # the state it depended on, when it failed (None: not known)


def cause_of(res: Resource, error: Exception, view: Mapping[str, Observed]) -> Cause:
    """The cause of a permanent failure, judged on `view`, the broker as last
    seen (a full pass's list, updated by every read since)."""
    source = getattr(error, "cause", error)
    code = int(getattr(source, "err_code", 0) or 0)
    related = tuple(getattr(error, "related", ()))
    if code == ERR_SUBJECTS_OVERLAP and not set(related) <= set(overlapping(res, view)):
        # The broker named an overlap the view does not show: the view is
        # older than the change that caused it, so the next full pass decides.
        return Cause(code, related, None)
    return Cause(code, related, _seen(res, code, related, view))


def changed(res: Resource, cause: Cause, view: Mapping[str, Observed]) -> bool:
    """Does `view` (a full pass's observation) differ where the failure looked?"""
    return cause.seen is None or _seen(res, cause.err_code, cause.related, view) != cause.seen


def overlapping(res: Resource, view: Mapping[str, Observed]) -> list[str]:
    """The other streams whose subjects overlap the resource's, by name."""
    ours = [str(s) for s in desired.create_config(res).get("subjects") or ()]
    return sorted(
        name
        for name, obs in view.items()
        if name != res.stream
        and any(
            subjects_overlap(mine, str(theirs))
            for mine in ours
            for theirs in obs.config.get("subjects") or ()
        )
    )


def _config(obs: Observed | None) -> str | None:
    return None if obs is None else json.dumps(obs.config, sort_keys=True, default=str)


def _reserved(view: Mapping[str, Observed], storage: str) -> int:
    """Bytes the broker reserves for capped streams of one storage type."""
    total = 0
    for obs in view.values():
        config: Mapping[str, Any] = obs.config
        cap = int(config.get("max_bytes", -1) or -1)
        if cap > 0 and config.get("storage", "file") == storage:
            total += cap * int(config.get("num_replicas", 1) or 1)
    return total


def _seen(
    res: Resource, code: int, related: tuple[str, ...], view: Mapping[str, Observed]
) -> Hashable:
    own = _config(view.get(res.stream))
    named = tuple((name, _config(view.get(name))) for name in related)
    if code == ERR_SUBJECTS_OVERLAP:
        others = tuple((name, _config(view[name])) for name in overlapping(res, view))
        return (own, named, others)
    if code in (ERR_INSUFFICIENT_STORAGE, ERR_INSUFFICIENT_MEMORY):
        storage = "memory" if code == ERR_INSUFFICIENT_MEMORY else "file"
        return (own, named, _reserved(view, storage))
    return (own, named)
