"""What a declared durable consumer is: its stream, its durable name, its fields.

Pure data. `[consumers.<STREAM>.<DURABLE>]` in the file becomes one
`Consumer`; `config.consumers` builds it, `core.consumer_plan` decides on it.
The fields keep the JetStream API's names, so `declared` is already in wire
form (durations in ns, sizes in bytes, lists as tuples).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CONSUMER_KIND = "consumer"  # the kind word in plan, check and --json


@dataclass(frozen=True)
class Consumer:
    """One declared durable consumer. `declared` maps JetStream consumer config
    fields to wire values, only the ones the file names."""

    stream: str
    durable: str
    declared: Mapping[str, Any]
    # On re-create after a loss: start after the last observed ack floor
    # (True), or apply the declared deliver policy (False).
    resume: bool = True
    spec_version: int = 1
    writer: str = ""
    force_spec: bool = False

    @property
    def name(self) -> str:
        """The name in reports: `STREAM/DURABLE` (neither may hold a '/')."""
        return f"{self.stream}/{self.durable}"

    @property
    def is_push(self) -> bool:
        return bool(self.declared.get("deliver_subject"))
