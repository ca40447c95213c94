"""The planner: desired + observed -> one decision per resource. Pure, no I/O.

Decisions: `create` (missing), `update` (drifted; a field-level diff of
(field, current, desired) and the complete config to send), `in_sync`,
`blocked` (a difference the broker cannot make in place, a stream of the
wrong shape holding the name, a data-discarding change on a protected
resource, or another writer's equal spec_version), or `newer_spec`.
Fields are compared as they would be sent, so a successful write always
plans in sync afterwards. What an update does to stored data comes from
`stake`, judged on the whole config it leaves in force. The marker other
watchdogs left (`desired.Marker`) is obeyed within bounds: see
`SPEC_VERSION_MARGIN` and `force_spec`. `apply` executes decisions;
`render` shows them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from kanade_watchdog.config import sources, streamfields
from kanade_watchdog.core import desired
from kanade_watchdog.core.serverinfo import ServerInfo, blocked_reason, unsupported
from kanade_watchdog.core.stake import Stake, stakes
from kanade_watchdog.model import fieldvalues
from kanade_watchdog.model.resources import Kind, Resource
from kanade_watchdog.model.units import format_duration_ns, format_size

# Stake is re-exported: callers of `plan` read `Decision.stakes`.
__all__ = ["Action", "Change", "Decision", "Observed", "Stake", "decide", "plan", "show"]


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
        if isinstance(self.desired, fieldvalues.Items):  # a list owned as a whole
            return f"{self.field}: {fieldvalues.list_change(self.current, self.desired)}"
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


@dataclass(frozen=True, slots=True)  # one kept per declared resource: at 10,000, ~1 MiB less
class Decision:
    resource: Resource
    action: Action
    changes: tuple[Change, ...] = ()
    send: Mapping[str, Any] | None = None  # the full config for create/update
    reason: str = ""  # why blocked
    at_stake: tuple[str, ...] = ()  # the texts of `stakes`, filled in from them
    conflict: bool = False  # same spec_version, different content: two configs disagree
    present: bool | None = None  # exists on the broker (None: derive from the action)
    stakes: tuple[Stake, ...] = ()  # what the update does to stored data
    warnings: tuple[str, ...] = ()  # worth an operator's eye whatever the action
    suspicious_marker: bool = False  # a marker too far ahead to believe was not obeyed
    too_new: tuple[str, ...] = ()  # declared fields the connected server lacks

    def __post_init__(self) -> None:
        # `at_stake` predates `stakes`; it is kept for the callers that print it.
        if self.stakes:
            object.__setattr__(self, "at_stake", tuple(s.text for s in self.stakes))

    @property
    def writes(self) -> bool:
        return self.action in (Action.CREATE, Action.UPDATE)

    @property
    def loses_data(self) -> bool:
        """Stored messages would be deleted (what `protect = true` refuses)."""
        return any(s.loses_data for s in self.stakes)


_DURATION_FIELDS = {"max_age", "ttl", "duplicate_window", *streamfields.DURATIONS}
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
    mirror = sources.shape_problem(resource.stream, resource.declared, config)
    if mirror:
        return mirror
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


# A marker more than this far above the config's own spec_version is not
# believed: no rollout skips a hundred versions, while a forged
# `kanade.spec_version = 2147483647` would otherwise shut the watchdog out of
# a stream for good (a config stops at 2^31-1). Trust model: docs/SECURITY.md.
SPEC_VERSION_MARGIN = 100

_PRINTABLE_WRITER = re.compile(r"[\x21-\x7e]{1,64}")


def _writer_text(writer: str | None) -> str:
    """A writer read from the broker, shown only if it looks like one."""
    if writer is None:
        return "not recorded"
    return writer if _PRINTABLE_WRITER.fullmatch(writer) else "unprintable"


def _diff(
    resource: Resource, config: Mapping[str, Any], send: Mapping[str, Any]
) -> tuple[tuple[Change, ...], tuple[str, ...]]:
    """Declared fields that differ, each compared as it would be SENT: the
    broker stores what is sent, so after a successful write the same
    observation compares equal. A value the send had to adjust (a dedupe window
    clamped to a max_age only the broker holds) is compared adjusted, and noted."""
    changes: list[Change] = []
    notes: list[str] = []
    for wire, (key, declared) in desired.compared(resource).items():
        current = desired.observed_value(config, wire)
        wanted = declared
        if wire != "metadata":  # of metadata only the declared keys are ours
            sent = desired.observed_value(send, wire)
            if not desired.same(wire, sent, wanted):
                notes.append(
                    f"{key} {show(key, wanted)} is sent as {show(key, sent)}: the broker "
                    f"refuses a duplicate_window longer than max_age "
                    f"({show('max_age', send.get('max_age'))}); declare max_age to own it"
                    if wire == "duplicate_window"
                    else f"{key} {show(key, wanted)} is sent as {show(key, sent)}"
                )
                wanted = sent
        if not desired.same(wire, current, wanted):
            changes.append(Change(key, current, wanted))
    return tuple(changes), tuple(notes)


def _immutable(field_name: str, current: Any, wanted: Any) -> str | None:
    """Why the broker cannot make this change in place (it answers 10052)."""
    if field_name == "storage":
        return f"storage cannot change from {current} to {wanted} in place"
    if field_name == "retention" and "workqueue" in (current, wanted):
        return f"retention cannot change from {current} to {wanted} in place"
    if field_name in ("deny_delete", "deny_purge") and current and not wanted:
        return f"{field_name} cannot be turned off once set"
    return sources.immutable(field_name, current, wanted)


def _create_only(resource: Resource, config: Mapping[str, Any]) -> list[str]:
    """Declared values that apply at create only and differ on the broker: said,
    never written (the stream keeps the sequence it was created with)."""
    out = []
    for key in streamfields.CREATE_ONLY & set(resource.declared):
        current = desired.observed_value(config, key)
        if current != resource.declared[key]:
            out.append(
                f"{key} {resource.declared[key]} applies when the stream is created; this one "
                f"was created with {current or 'none'} and keeps its sequence"
            )
    return out


def _newer_spec(resource: Resource, owner: desired.Marker) -> str:
    reason = (
        f"newer spec present (spec_version {owner.spec_version} > {resource.spec_version}); "
        "left to the watchdog that wrote it"
    )
    if resource.writer and owner.writer == resource.writer:
        reason += (
            f"; that was this watchdog, from a newer version of this file: give this one "
            f"spec_version {owner.spec_version + 1} or more to apply it"
        )
    return reason


def _conflict(resource: Resource, owner: desired.Marker) -> str:
    head = f"the broker holds spec_version {owner.spec_version} written from different content"
    if owner.writer is None:
        who = (
            " by a watchdog that did not record its writer (another host's config, or "
            "this file before the watchdog recorded writers)"
        )
    else:
        who = (
            f" by another writer ({_writer_text(owner.writer)}; this one is "
            f"{resource.writer or 'not recorded'}): another host's config, or another "
            "config file on this host"
        )
    return head + who + "; raise spec_version to apply this change"


def _foreign(resource: Resource, owner: desired.Marker, own_hashes: frozenset[str]) -> bool:
    """An equal-version marker from different content that is not ours: another
    writer's spec. This writer's own earlier edit of its file is not foreign."""
    if owner.spec_hash == desired.spec_hash(resource) or owner.spec_hash in own_hashes:
        return False
    return not (resource.writer and owner.writer == resource.writer)


def decide(
    resource: Resource,
    observed: Observed | None,
    now: datetime,
    *,
    own_hashes: frozenset[str] = frozenset(),
    force_spec: bool = False,
    server: ServerInfo | None = None,
) -> Decision:
    """The one decision for one resource. `now` (naive UTC) dates max_age risks;
    `own_hashes` are specs this process wrote before a reload (its own edits);
    `force_spec` (or the resource's `[watchdog] force_spec`) obeys no marker;
    `server` (the connected one, when known) must support every declared field."""
    lacking = unsupported(resource.kind, resource.declared, server) if server else []
    if lacking and not (observed is not None and observed.leaderless):
        assert server is not None
        return Decision(
            resource,
            Action.BLOCKED,
            reason=blocked_reason(lacking, server),
            present=observed is not None,
            too_new=tuple(lacking),
        )
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
    force = force_spec or resource.force_spec
    owner = desired.observed_marker(config)
    warnings: list[str] = []
    suspicious = False
    if owner is not None and owner.spec_version > resource.spec_version:
        if owner.spec_version - resource.spec_version > SPEC_VERSION_MARGIN:
            suspicious = True
            warnings.append(
                f"suspicious marker: spec_version {owner.spec_version} on the broker is more "
                f"than {SPEC_VERSION_MARGIN} above this config's {resource.spec_version}; "
                "not obeyed, managed from this config (anyone with update rights can write "
                "the marker)"
            )
        elif force:
            warnings.append(
                f"newer spec present (spec_version {owner.spec_version} > "
                f"{resource.spec_version}), ignored: force_spec is on"
            )
        else:
            return Decision(resource, Action.NEWER_SPEC, reason=_newer_spec(resource, owner))
    send = desired.overlay(resource, config)
    changes, notes = _diff(resource, config, send)
    warnings += [*notes, *_create_only(resource, config)]
    if not changes:
        return Decision(
            resource, Action.IN_SYNC, warnings=tuple(warnings), suspicious_marker=suspicious
        )
    if (
        owner is not None
        and owner.spec_version == resource.spec_version
        and _foreign(resource, owner, own_hashes)
    ):
        if not force:
            # Reverting would start a tug of war with the other watchdog.
            return Decision(
                resource,
                Action.BLOCKED,
                changes=changes,
                conflict=True,
                warnings=tuple(warnings),
                reason=_conflict(resource, owner),
            )
        warnings.append(
            f"spec_version {owner.spec_version} written from different content by another "
            "writer, overridden: force_spec is on"
        )
    immutable = [
        reason
        for c in changes
        if (reason := _immutable(desired.wire_field(resource.kind, c.field), c.current, c.desired))
    ]
    if immutable:
        return Decision(
            resource,
            Action.BLOCKED,
            changes=changes,
            reason="; ".join(immutable),
            warnings=tuple(warnings),
            suspicious_marker=suspicious,
        )
    effects = stakes(resource.kind, config, send, observed.state, now)
    lost = [s.text for s in effects if s.loses_data]
    if lost and resource.protect:
        return Decision(
            resource,
            Action.BLOCKED,
            changes=changes,
            stakes=effects,
            reason="protect = true refuses an update that discards data: " + "; ".join(lost),
            warnings=tuple(warnings),
            suspicious_marker=suspicious,
        )
    return Decision(
        resource,
        Action.UPDATE,
        changes=changes,
        send=send,
        stakes=effects,
        warnings=tuple(warnings),
        suspicious_marker=suspicious,
    )


def plan(
    resources: Iterable[Resource],
    observed: Mapping[str, Observed],
    now: datetime,
    *,
    force_spec: bool = False,
    server: ServerInfo | None = None,
) -> list[Decision]:
    """One decision per declared resource, in declaration order."""
    return [
        decide(r, observed.get(r.stream), now, force_spec=force_spec, server=server)
        for r in resources
    ]
