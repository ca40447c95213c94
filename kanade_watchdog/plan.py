"""The planner: desired + observed -> one decision per resource. Pure, no I/O.

Decisions: `create` (missing), `update` (drifted; a field-level diff of
(field, current, desired) and the complete config to send), `in_sync`, or
`blocked` (a difference the broker cannot make in place, a stream of the
wrong shape holding the name, or a data-discarding change on a protected
resource). Data that an update would discard is spelt out in `at_stake`.
`apply` executes decisions; `render` shows them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from . import desired
from .config import Kind, Resource
from .units import format_duration_ns, format_size


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    IN_SYNC = "in_sync"
    BLOCKED = "blocked"
    NEWER_SPEC = "newer_spec"  # a watchdog with a higher spec_version owns it now


@dataclass(frozen=True)
class Change:
    """One drifted field, named as the config names it."""

    field: str
    current: Any
    desired: Any

    def __str__(self) -> str:
        return f"{self.field}: {show(self.field, self.current)} -> {show(self.field, self.desired)}"


@dataclass(frozen=True)
class Observed:
    """One stream as the broker reported it (config and state, verbatim)."""

    config: Mapping[str, Any]
    state: Mapping[str, Any] = field(default_factory=dict)
    cluster: Mapping[str, Any] = field(default_factory=dict)
    # Listed by name only: it exists, but no leader answers for it right now.
    leaderless: bool = False
    # A create answer: False when an identical stream was already there.
    did_create: bool = True


@dataclass(frozen=True)
class Decision:
    resource: Resource
    action: Action
    changes: tuple[Change, ...] = ()
    send: Mapping[str, Any] | None = None  # the full config for create/update
    reason: str = ""  # why blocked
    at_stake: tuple[str, ...] = ()  # data an update would discard
    conflict: bool = False  # same spec_version, different content: two configs disagree
    present: bool | None = None  # exists on the broker (None: derive from the action)

    @property
    def writes(self) -> bool:
        return self.action in (Action.CREATE, Action.UPDATE)


_DURATION_FIELDS = {"max_age", "ttl", "duplicate_window"}
_SIZE_FIELDS = {"max_bytes", "max_msg_size", "max_value_size"}


def show(key: str, value: Any) -> str:
    """A value as an operator would write it in the config."""
    if isinstance(value, int) and not isinstance(value, bool):
        if key in _DURATION_FIELDS:
            return format_duration_ns(value) if value else "unlimited"
        if key in _SIZE_FIELDS:
            return format_size(value)
        if value < 0:
            return "unlimited"
    if isinstance(value, tuple) and key == "subjects":
        return "[" + ", ".join(value) + "]"
    if isinstance(value, tuple) and key in ("placement", "metadata"):
        return "{" + ", ".join(f"{k}={v!r}" for k, v in value) + "}"
    return (
        repr(value)
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


def _wrong_shape(resource: Resource, config: Mapping[str, Any]) -> str | None:
    """Why the stream holding our name is not something we may manage."""
    if config.get("mirror"):
        return f"stream {resource.stream} is a mirror; it is not managed here"
    if config.get("sealed"):
        return f"stream {resource.stream} is sealed and can no longer be changed"
    for field_name, value in desired.identity(resource).items():
        current = desired.observed_value(config, field_name)
        if not desired.same(field_name, current, value):
            what = "a KV bucket" if resource.kind is Kind.KV else "an object store"
            return (
                f"stream {resource.stream} exists but is not {what} "
                f"(subjects {show('subjects', current)}); rename or remove it by hand"
            )
    return None


def _immutable(field_name: str, current: Any, wanted: Any) -> str | None:
    """Why the broker cannot make this change in place (it answers 10052)."""
    if field_name == "storage":
        return f"storage cannot change from {current} to {wanted} in place"
    if field_name == "retention" and "workqueue" in (current, wanted):
        return f"retention cannot change from {current} to {wanted} in place"
    if field_name in ("deny_delete", "deny_purge") and current and not wanted:
        return f"{field_name} cannot be turned off once set"
    return None


def _lowered(current: int, wanted: int) -> bool:
    """True when `wanted` is a tighter limit than `current` (<= 0 is none)."""
    return wanted > 0 and (current <= 0 or wanted < current)


def _at_stake(
    resource: Resource,
    config: Mapping[str, Any],
    state: Mapping[str, Any],
    changes: Iterable[Change],
    now: datetime,
) -> list[tuple[str, bool]]:
    """What the update does to stored data, in an operator's words, each with
    whether data is actually lost (what `protect` refuses)."""
    messages = int(state.get("messages", 0) or 0)
    stored = int(state.get("bytes", 0) or 0)
    if not messages:
        return []
    # The policy in force after the update decides: with discard old the
    # broker deletes the oldest messages at once; with discard new it keeps
    # them all and refuses new writes until usage drops.
    discard = dict(resource.declared).get("discard") if resource.kind is Kind.STREAM else None
    discard_old = (discard or config.get("discard", "old")) == "old"
    out: list[tuple[str, bool]] = []
    for change in changes:
        wire = desired.wire_field(resource.kind, change.field)
        cur, new = change.current, change.desired
        if wire == "max_bytes" and _lowered(cur, new) and stored > new:
            over = (
                f"{format_size(stored - new)} of {format_size(stored)} stored is over the new "
                f"cap of {format_size(new)}"
            )
            out.append(
                (
                    over
                    + (
                        " and would be discarded"
                        if discard_old
                        else "; new writes would be refused"
                    ),
                    discard_old,
                )
            )
        elif wire == "max_msgs" and _lowered(cur, new) and messages > new:
            over = f"{messages - new} of {messages} messages over the new max_msgs {new}"
            out.append(
                (
                    over
                    + (" would be discarded" if discard_old else "; new writes would be refused"),
                    discard_old,
                )
            )
        elif wire == "max_age" and _lowered(cur, new):
            first = _parse_ts(state.get("first_ts"))
            if first is not None and (now - first).total_seconds() * 1e9 > new:
                out.append(
                    (
                        f"messages older than {format_duration_ns(new)} "
                        f"(oldest from {first:%Y-%m-%d %H:%M:%S}Z) would expire at once",
                        True,
                    )
                )
        elif wire == "max_msgs_per_subject" and _lowered(cur, new):
            out.append(
                (
                    f"revisions beyond {new} per key/subject would be dropped "
                    f"({messages} messages stored)",
                    True,
                )
            )
    return out


def _parse_ts(text: Any) -> datetime | None:
    if not isinstance(text, str) or text.startswith("0001-"):
        return None
    try:
        # Go prints nanoseconds; Python's parser takes at most microseconds.
        head, _, frac = text.rstrip("Z").partition(".")
        return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}")
    except ValueError:
        return None


def decide(
    resource: Resource,
    observed: Observed | None,
    now: datetime,
    *,
    own_hashes: frozenset[str] = frozenset(),
) -> Decision:
    """The one decision for one resource. `now` (naive UTC) dates max_age risks;
    `own_hashes` are specs this process wrote before a reload (its own edits)."""
    if observed is None:
        return Decision(resource, Action.CREATE, send=desired.create_config(resource))
    if observed.leaderless:
        return Decision(
            resource,
            Action.BLOCKED,
            changes=(),
            present=True,
            reason="no leader answers for this stream right now (election or "
            "nodes down); nothing is changed until one does",
        )
    config = observed.config
    shape = _wrong_shape(resource, config)
    if shape:
        return Decision(resource, Action.BLOCKED, reason=shape)
    owner = desired.observed_marker(config)
    if owner is not None and owner[0] > resource.spec_version:
        return Decision(
            resource,
            Action.NEWER_SPEC,
            reason=f"newer spec present (spec_version {owner[0]} > {resource.spec_version}); "
            "left to the watchdog that wrote it",
        )
    changes: list[Change] = []
    for wire, (key, wanted) in desired.compared(resource).items():
        current = desired.observed_value(config, wire)
        if not desired.same(wire, current, wanted):
            changes.append(Change(key, current, wanted))
    if not changes:
        return Decision(resource, Action.IN_SYNC)
    if (
        owner is not None
        and owner[0] == resource.spec_version
        and owner[1] != desired.spec_hash(resource)
        and owner[1] not in own_hashes
    ):
        # Reverting would start a tug of war with the other watchdog.
        return Decision(
            resource,
            Action.BLOCKED,
            changes=tuple(changes),
            conflict=True,
            reason=f"the broker holds spec_version {owner[0]} written from different content "
            "(another watchdog's config, or this file edited without raising spec_version); "
            "raise spec_version to apply this change",
        )
    immutable = [
        reason
        for c in changes
        if (reason := _immutable(desired.wire_field(resource.kind, c.field), c.current, c.desired))
    ]
    if immutable:
        return Decision(
            resource, Action.BLOCKED, changes=tuple(changes), reason="; ".join(immutable)
        )
    effects = _at_stake(resource, config, observed.state, changes, now)
    at_stake = tuple(text for text, _ in effects)
    lost = [text for text, loses_data in effects if loses_data]
    if lost and resource.protect:
        return Decision(
            resource,
            Action.BLOCKED,
            changes=tuple(changes),
            at_stake=at_stake,
            reason="protect = true refuses an update that discards data: " + "; ".join(lost),
        )
    return Decision(
        resource,
        Action.UPDATE,
        changes=tuple(changes),
        send=desired.overlay(resource, config),
        at_stake=at_stake,
    )


def plan(
    resources: Iterable[Resource], observed: Mapping[str, Observed], now: datetime
) -> list[Decision]:
    """One decision per declared resource, in declaration order."""
    return [decide(r, observed.get(r.stream), now) for r in resources]
