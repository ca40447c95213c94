"""Where a lost durable consumer resumes: after its last observed ack floor.

Pure. The daemon keeps, per declared consumer, the ack floor (stream
sequence) from the last CONSUMER.LIST or CONSUMER.INFO it read. A consumer
re-created at floor + 1 with deliver_policy by_start_sequence skips nothing
unacknowledged; what it replays is bounded by what was acknowledged between
that observation and the loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Position:
    """A consumer's ack floor, and the stream it was observed on."""

    ack_floor: int  # stream sequence of the last message acknowledged in order
    stream_created: str = ""  # the stream's `created`: another one means re-created


def observe(info: Mapping[str, Any], stream_created: str = "") -> Position:
    """The position in a CONSUMER.INFO (or one CONSUMER.LIST entry)."""
    floor = (info.get("ack_floor") or {}).get("stream_seq", 0)
    return Position(ack_floor=int(floor or 0), stream_created=stream_created)


def resume_from(
    kept: Position | None, *, stream_created: str = "", stream_last_seq: int
) -> int | None:
    """The sequence to start the re-created consumer at, or None to apply the
    declared deliver policy: nothing was observed, nothing was acknowledged,
    or the stream itself is another one now (re-created: no position to keep)."""
    if kept is None or kept.ack_floor <= 0:
        return None
    if kept.stream_created and stream_created and kept.stream_created != stream_created:
        return None
    if stream_last_seq < kept.ack_floor:
        return None  # sequences went backwards: not the stream that was observed
    return kept.ack_floor + 1
