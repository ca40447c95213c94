"""Data at stake: what an update does to the messages a stream already holds.

Pure. Judged from the whole config the update leaves in force (the overlay
`desired.overlay` builds and sends) against the stream's state, because the
broker enforces the resulting config, not the fields that changed: switching
discard to old on a stream held over its cap by discard new drops data
although no cap moved. What nats-server 2.15.1 does at once on an update
(measured; `tests/test_stake_property.py` keeps checking it):

- retention limits -> interest deletes every message that no consumer still
  has to acknowledge: all of them when the stream has no consumer;
- max_bytes or max_msgs below usage: with discard old the oldest messages go,
  with discard new everything stays and new writes are refused;
- max_msgs_per_subject (KV history) trims every subject, whatever discard says;
- a shorter max_age (a bucket's ttl) expires the older messages;
- removing a subject keeps what is stored under it, and a lower max_msg_size
  only applies to new messages: neither is at stake.

`plan` turns these into `Decision.stakes`, and `protect` refuses any that
`loses_data`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kanade_watchdog.core.desired import SERVER_DEFAULTS
from kanade_watchdog.model.resources import Kind
from kanade_watchdog.model.units import format_duration_ns, format_size


@dataclass(frozen=True)
class Stake:
    """One effect of an update on stored data, in an operator's words.

    `loses_data` is True when stored messages would be deleted (what
    `protect = true` refuses), False when nothing is lost but the stream
    changes behaviour (a discard-new cap below usage refuses new writes)."""

    text: str
    loses_data: bool

    def __str__(self) -> str:
        return self.text


def _get(config: Mapping[str, Any], field: str) -> Any:
    value = config.get(field)
    return SERVER_DEFAULTS.get(field) if value is None else value


def _limit(config: Mapping[str, Any], field: str) -> int:
    """A limit as a number; <= 0 means none."""
    try:
        return int(_get(config, field))
    except (TypeError, ValueError):
        return -1


def _tightened(before: int, after: int) -> bool:
    return after > 0 and (before <= 0 or after < before)


def parse_ts(text: Any) -> datetime | None:
    """A broker timestamp (Go, nanoseconds, `Z`) as naive UTC; None when unset."""
    if not isinstance(text, str) or text.startswith("0001-"):
        return None
    try:
        # Go prints nanoseconds; Python's parser takes at most microseconds.
        head, _, frac = text.rstrip("Z").partition(".")
        return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}")
    except ValueError:
        return None


def _retention(
    before: Mapping[str, Any], after: Mapping[str, Any], messages: int, state: Mapping[str, Any]
) -> Stake | None:
    if _get(before, "retention") != "limits" or _get(after, "retention") != "interest":
        return None
    consumers = int(state.get("consumer_count", 0) or 0)
    why = "interest retention keeps only what a consumer still has to acknowledge"
    if consumers <= 0:
        return Stake(
            f"all {messages} stored messages would be deleted at once: {why}, "
            "and the stream has no consumer",
            True,
        )
    plural = "s" if consumers != 1 else ""
    return Stake(
        f"stored messages that every consumer has acknowledged would be deleted at once "
        f"({messages} stored, {consumers} consumer{plural}): {why}",
        True,
    )


def _caps(
    before: Mapping[str, Any], after: Mapping[str, Any], messages: int, stored: int
) -> list[Stake]:
    discard_old = _get(after, "discard") == "old"
    switched = _get(before, "discard") != _get(after, "discard")
    out: list[Stake] = []
    for field, used in (("max_bytes", stored), ("max_msgs", messages)):
        cap, was = _limit(after, field), _limit(before, field)
        # Usage already over an unchanged cap under an unchanged policy is
        # not this update's doing (discard new keeps it; the broker put it so).
        if cap <= 0 or used <= cap or (cap == was and not switched):
            continue
        new = "new " if cap != was else ""
        if field == "max_bytes":
            over = (
                f"{format_size(used - cap)} of {format_size(used)} stored is over the {new}"
                f"cap of {format_size(cap)}"
            )
        else:
            over = f"{used - cap} of {used} messages are over the {new}max_msgs {cap}"
        if discard_old:
            because = " (discard old deletes the oldest first)" if switched else ""
            out.append(Stake(f"{over} and would be discarded{because}", True))
        else:
            out.append(
                Stake(f"{over}; nothing is lost (discard new): new writes would be refused", False)
            )
    return out


def _per_subject(
    kind: Kind,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    messages: int,
    state: Mapping[str, Any],
) -> Stake | None:
    per, was = _limit(after, "max_msgs_per_subject"), _limit(before, "max_msgs_per_subject")
    if not _tightened(was, per) or messages <= per:
        return None
    subjects = int(state.get("num_subjects", 0) or 0)
    if subjects >= messages:  # one message per subject: nothing is beyond any limit
        return None
    where = "per key" if kind is Kind.KV else "per subject"
    under = f" under {subjects} subjects" if subjects else ""
    return Stake(
        f"revisions beyond {per} {where} would be dropped ({messages} messages stored{under})",
        True,
    )


def _full_subject(
    before: Mapping[str, Any], after: Mapping[str, Any], messages: int, state: Mapping[str, Any]
) -> Stake | None:
    """discard_new_per_subject turned on where some subject must hold the limit
    already: more messages than subjects x (limit - 1) leaves one full at least."""
    if not after.get("discard_new_per_subject") or before.get("discard_new_per_subject"):
        return None
    per, subjects = _limit(after, "max_msgs_per_subject"), int(state.get("num_subjects", 0) or 0)
    if per <= 0 or subjects <= 0 or messages <= subjects * (per - 1):
        return None
    return Stake(
        f"at least one subject already holds max_msgs_per_subject {per} ({messages} messages "
        f"under {subjects} subjects); nothing is lost (discard new): new writes would be refused",
        False,
    )


def _age(
    before: Mapping[str, Any], after: Mapping[str, Any], state: Mapping[str, Any], now: datetime
) -> Stake | None:
    age, was = _limit(after, "max_age"), _limit(before, "max_age")
    if not _tightened(was, age):
        return None
    first = parse_ts(state.get("first_ts"))
    if first is None or (now - first).total_seconds() * 1e9 <= age:
        return None
    return Stake(
        f"messages older than {format_duration_ns(age)} "
        f"(oldest from {first:%Y-%m-%d %H:%M:%S}Z) would expire at once",
        True,
    )


def stakes(
    kind: Kind,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    state: Mapping[str, Any],
    now: datetime,
) -> tuple[Stake, ...]:
    """What replacing config `before` with `after` does to the data `state`
    describes. `now` (naive UTC) dates what a shorter max_age expires."""
    messages = int(state.get("messages", 0) or 0)
    stored = int(state.get("bytes", 0) or 0)
    if messages <= 0:
        return ()
    found = [
        _retention(before, after, messages, state),
        *_caps(before, after, messages, stored),
        _per_subject(kind, before, after, messages, state),
        _full_subject(before, after, messages, state),
        _age(before, after, state, now),
    ]
    return tuple(s for s in found if s is not None)
