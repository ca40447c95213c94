"""What a declared resource is: its kind, name, backing stream and identity.

Pure data. A KV bucket `b` is the stream `KV_b` with subjects `$KV.b.>`, an
object store `b` is `OBJ_b` with `$O.b.C.>` and `$O.b.M.>` (ADR-8, ADR-20):
those subjects are defined here once (`identity_subjects`) for the config
checks, the desired configs and the planner's shape test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    STREAM = "stream"
    KV = "kv"
    OBJECT_STORE = "object_store"


# Where each kind lives in the file, and the backing stream's name prefix.
SECTION = {Kind.STREAM: "streams", Kind.KV: "kv_buckets", Kind.OBJECT_STORE: "object_stores"}
STREAM_PREFIX = {Kind.STREAM: "", Kind.KV: "KV_", Kind.OBJECT_STORE: "OBJ_"}


@dataclass(frozen=True, slots=True)  # 10,000 of them in a large declaration
class Resource:
    """One declared resource. `declared` maps config keys to values already in
    the broker's units (ns, bytes, -1 for unlimited)."""

    kind: Kind
    name: str
    declared: Mapping[str, Any]
    protect: bool = False
    spec_version: int = 1  # the file's spec_version, carried for the planner
    writer: str = ""  # who writes: [watchdog] id or this host + file (see writer_id)
    force_spec: bool = False  # [watchdog] force_spec: obey no marker on the broker

    @property
    def stream(self) -> str:
        """The JetStream stream that is this resource on the broker."""
        return STREAM_PREFIX[self.kind] + self.name

    @property
    def label(self) -> str:
        return self.name if self.kind is Kind.STREAM else f"{self.kind}:{self.name}"


def identity_subjects(kind: Kind, name: str) -> tuple[str, ...]:
    """The subjects that make a bucket's stream that bucket (none for a stream)."""
    if kind is Kind.KV:
        return (f"$KV.{name}.>",)
    if kind is Kind.OBJECT_STORE:
        return (f"$O.{name}.C.>", f"$O.{name}.M.>")
    return ()


def kind_word(kind: Kind) -> str:
    return {Kind.STREAM: "stream", Kind.KV: "KV bucket", Kind.OBJECT_STORE: "object store"}[kind]
