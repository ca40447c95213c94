"""Export: what the broker holds, written back as a declaration an operator can adopt.

Pure, no I/O. From the stream infos a STREAM.LIST returns it builds one entry
per resource: buckets are recognised by their shape (ADR-8 `KV_<b>`, ADR-20
`OBJ_<b>`) and written as `kv_buckets` / `object_stores`, everything else as
`streams`. Only fields that differ from the server's (or the bucket shape's)
defaults are written, in readable units, and every written value is read
back through `config.FIELDS` so that `plan` on the result finds nothing to
change. Mirrors and sourced streams are written too (a KV mirror or a bucket
sourced from buckets in the ADR-8 shape). What the declaration language
cannot say (a sealed stream, a value outside what the config accepts, a
field newer than this release) is never dropped silently: a stream is
skipped with a comment saying why, or its declarable part is written with a
comment naming what was left out. `desired` supplies the defaults and the
marker keys; `export_doc` writes the TOML; `export_cmd` does the I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kanade_watchdog.config import streamfields
from kanade_watchdog.config.load import FIELDS, REQUIRED
from kanade_watchdog.core import desired
from kanade_watchdog.core.undeclared import matches
from kanade_watchdog.model.resources import STREAM_PREFIX, Kind, Resource, kind_word
from kanade_watchdog.model.subjects import bucket_name_problem, stream_name_problem
from kanade_watchdog.model.units import format_duration_ns, format_size

# Keys the broker owns (`_nats.*`) and the watchdog's own marker (`kanade.*`):
# never part of a declaration.
_FOREIGN_METADATA_PREFIXES = ("_nats", "kanade.")

_DURATIONS = frozenset({"max_age", "ttl", "duplicate_window", *streamfields.DURATIONS})
_SIZES = frozenset({"max_bytes", "max_msg_size", "max_value_size"})
_COUNTS = frozenset({"max_msgs", "max_msgs_per_subject", *streamfields.COUNTS})

# Wire fields outside every declaration kind, with the value that means "not
# used". A field not listed here counts as unused when it is empty/false/0.
_UNUSED: dict[str, Any] = {
    "max_consumers": -1,
    "consumer_limits": {},
    "mirror_direct": False,
    "sealed": False,
    "allow_msg_ttl": False,
    "no_ack": False,
    "discard_new_per_subject": False,
    "allow_msg_counter": False,
    "allow_msg_schedules": False,
    "allow_atomic": False,
    "allow_batched": False,
    "subject_delete_marker_ttl": 0,
    "first_seq": 0,
    "template_owner": "",
    "persist_mode": "default",
}
# Fields the official clients set differently on the buckets they create
# (nats-py: allow_direct false, allow_msg_ttl true; the JS client:
# deny_delete false): a bucket is the same bucket either way.
_CLIENT_CHOICES: dict[Kind, frozenset[str]] = {
    Kind.STREAM: frozenset(),
    Kind.KV: frozenset({"allow_direct", "deny_delete", "allow_msg_ttl"}),
    Kind.OBJECT_STORE: frozenset({"allow_direct", "deny_delete", "allow_msg_ttl"}),
}
# Handled before the field-by-field walk.
_STRUCTURAL = frozenset({"name", "subjects", "metadata", "mirror", "sources", "sealed"})


@dataclass(frozen=True)
class Held:
    """One stream as STREAM.LIST reports it (config, state, created)."""

    config: Mapping[str, Any]
    state: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""
    leaderless: bool = False  # listed by name only: no leader answered

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> Held:
        return cls(
            config=info.get("config") or {},
            state=info.get("state") or {},
            created=str(info.get("created") or ""),
        )


@dataclass(frozen=True)
class Entry:
    """One exported resource: config keys -> TOML values, in FIELDS order."""

    kind: Kind
    name: str
    values: Mapping[str, Any]
    holds: str  # what the broker holds: messages, bytes, created
    left_out: tuple[str, ...] = ()  # `field = value` the language cannot declare yet
    note: str = ""  # why a bucket-like stream is exported as a plain stream
    spec_version: int | None = None  # from the watchdog's marker, if any

    @property
    def stream(self) -> str:
        return STREAM_PREFIX[self.kind] + self.name


@dataclass(frozen=True)
class Skipped:
    """A stream that cannot be declared at all, and why."""

    stream: str
    reason: str

    def __str__(self) -> str:
        return f"stream {self.stream}: not exported: {self.reason}"


@dataclass(frozen=True)
class Export:
    entries: tuple[Entry, ...]
    skipped: tuple[Skipped, ...]

    @property
    def spec_version(self) -> int:
        """The version a declaration needs so `plan` does not find newer
        specs: the highest a watchdog left on an exported resource."""
        return max((e.spec_version or 1 for e in self.entries), default=1)

    def count(self, kind: Kind) -> int:
        return sum(1 for e in self.entries if e.kind is kind)

    def summary(self) -> str:
        """'7 streams, 1 KV bucket, 0 object stores'."""
        counts = ((self.count(kind), kind_word(kind)) for kind in Kind)
        return ", ".join(f"{n} {word}{'s' if n != 1 else ''}" for n, word in counts)


# --- readable values -----------------------------------------------------------------


def exact_size(n: int) -> str | int:
    """Bytes as the largest unit that holds them exactly ('1GiB', '3kB'), else
    the byte count: a size written back must parse to the very same number."""
    if n < 0:
        return "unlimited"
    if n == 0:
        return 0
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n % size == 0:
            return f"{n // size}{unit}"
    for unit, size in (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return n


def readable(key: str, value: Any) -> Any:
    """A broker value (ns, bytes, -1) as an operator writes it in the config."""
    if isinstance(value, int) and not isinstance(value, bool):
        if key in _DURATIONS:
            return format_duration_ns(value)
        if key in _SIZES:
            return exact_size(value)
        if key in _COUNTS and value < 0:
            return "unlimited"
        return value
    if key == "subjects":
        return list(value or [])
    if key == "placement":
        placement = value or {}
        table: dict[str, Any] = {}
        if placement.get("cluster"):
            table["cluster"] = placement["cluster"]
        if placement.get("tags"):
            table["tags"] = list(placement["tags"])
        return table
    if key == "metadata":
        return dict(sorted((value or {}).items()))
    return value


def _show(value: Any) -> str:
    text = json.dumps(value, separators=(", ", ": "), sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


# --- shapes and defaults -------------------------------------------------------------


def shape(stream: str, config: Mapping[str, Any]) -> tuple[Kind, str, str]:
    """(kind, resource name, note). A bucket needs its exact subjects and
    rollup headers (plan requires both); a stream that has the name but not
    the shape is exported as a plain stream, with a note saying so."""
    subjects = sorted(config.get("subjects") or [])
    rollup = config.get("allow_rollup_hdrs") is True
    for kind in (Kind.KV, Kind.OBJECT_STORE):
        prefix = STREAM_PREFIX[kind]
        bucket = stream[len(prefix) :]
        if not stream.startswith(prefix) or bucket_name_problem(bucket):
            continue
        wanted = sorted(desired.identity(Resource(kind=kind, name=bucket, declared={}))["subjects"])
        mirror = config.get("mirror")
        kv_mirror = (
            kind is Kind.KV
            and not subjects
            and isinstance(mirror, Mapping)
            and str(mirror.get("name", "")).startswith(prefix)
        )
        if subjects != wanted and not kv_mirror:  # an ADR-8 mirror has no subjects
            continue
        if rollup:
            return kind, bucket, ""
        return (
            Kind.STREAM,
            stream,
            f"has the subjects of {kind_word(kind)} {bucket} but not rollup headers, "
            "so it is declared as a plain stream",
        )
    return Kind.STREAM, stream, ""


def _defaults(kind: Kind, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """What the broker holds for a resource of this kind nobody configured."""
    if kind is Kind.STREAM:
        base = dict(desired.SERVER_DEFAULTS)
    else:
        base = {**desired.SERVER_DEFAULTS, **desired.create_config(Resource(kind, name, {}))}
    base["metadata"] = {}  # create_config's marker is not a default anyone declares
    # The broker (and every client) shortens the dedupe window to max_age.
    age = config.get("max_age") or 0
    if age and age < desired.TWO_MINUTES_NS:
        base["duplicate_window"] = age
    return base


def _unused(value: Any) -> bool:
    return value in (None, False, 0, "", -1) or value in ({}, [])


def _clean_metadata(config: Mapping[str, Any]) -> dict[str, str]:
    metadata = config.get("metadata") or {}
    return {
        str(k): str(v)
        for k, v in metadata.items()
        if not str(k).startswith(_FOREIGN_METADATA_PREFIXES)
    }


def _holds(held: Held) -> str:
    messages = int(held.state.get("messages", 0) or 0)
    stored = int(held.state.get("bytes", 0) or 0)
    parts = [f"{messages} message{'s' if messages != 1 else ''}", format_size(stored)]
    consumers = int(held.state.get("consumer_count", 0) or 0)
    if consumers:
        parts.append(f"{consumers} consumer{'s' if consumers != 1 else ''} (not exported)")
    created = held.created
    if created and not created.startswith("0001-"):
        head, _, _frac = created.rstrip("Z").partition(".")
        parts.append(f"created {head.replace('T', ' ')}Z")
    return ", ".join(parts)


def _not_declarable(stream: str, config: Mapping[str, Any]) -> str | None:
    """Why a stream cannot be declared at all (plan would block or misread it)."""
    problem = stream_name_problem(stream)
    if problem:
        return f"name {problem}"
    if config.get("sealed"):
        return "sealed (it can no longer be changed, so it is not managed)"
    return None


# --- one stream -> one entry ---------------------------------------------------------


def entry(stream: str, held: Held) -> Entry | Skipped:
    """The declaration of one stream, or why there is none."""
    if held.leaderless:
        return Skipped(stream, "no leader answered for it (election or nodes down); export again")
    config = dict(held.config)
    reason = _not_declarable(stream, config)
    if reason:
        return Skipped(stream, reason)
    kind, name, note = shape(stream, config)
    config["metadata"] = _clean_metadata(config)
    defaults = _defaults(kind, name, config)
    values: dict[str, Any] = {}
    left_out: list[str] = []
    owned: set[str] = set(_STRUCTURAL)
    for key, parser in FIELDS[kind].items():
        wire = desired.wire_field(kind, key)
        owned.add(wire)
        if wire == "subjects" and kind is not Kind.STREAM:
            continue  # a bucket's subjects are its shape
        current = desired.observed_value(config, wire)
        if wire == "subjects" and not current and (config.get("mirror") or config.get("sources")):
            continue  # a mirror has none, a stream fed by sources may have none
        if key not in REQUIRED[kind] and current == desired.observed_value(defaults, wire):
            continue
        held_value = config.get(wire, desired.SERVER_DEFAULTS.get(wire))
        value = (
            streamfields.readable(kind, name, key, held_value)
            if wire in streamfields.NESTED
            else readable(key, held_value)
        )
        try:
            ok = streamfields.bind(kind, name, {key: parser(value)})[key] == current
        except (ValueError, TypeError, OverflowError):
            ok = False
        if ok:
            values[key] = value
        elif key in REQUIRED[kind]:
            return Skipped(stream, f"{key} {_show(value)} cannot be declared")
        else:
            left_out.append(f"{key} = {_show(value)} (outside what the config accepts)")
    owned |= set(streamfields.implied(kind, values))  # a KV mirror's mirror_direct...
    if "metadata" not in FIELDS[kind] and config["metadata"]:
        left_out.append(f"metadata = {_show(config['metadata'])}")
    placement = config.get("placement")
    if "placement" in owned and isinstance(placement, Mapping):
        # Only cluster and tags are declarable (newer servers know more keys).
        for extra in sorted(set(placement) - {"cluster", "tags"}):
            if not _unused(placement[extra]):
                left_out.append(f"placement.{extra} = {_show(placement[extra])}")
    for wire in sorted(set(config) - owned):
        value = config[wire]
        if wire in _CLIENT_CHOICES[kind]:
            continue
        if wire in defaults:
            usual = value == defaults[wire]
        elif wire in _UNUSED:
            usual = value == _UNUSED[wire]
        else:
            usual = _unused(value)
        if not usual:
            left_out.append(f"{wire} = {_show(value)}")
    marker = desired.observed_marker(held.config)
    return Entry(
        kind=kind,
        name=name,
        values=values,
        holds=_holds(held),
        left_out=tuple(left_out),
        note=note,
        spec_version=marker.spec_version if marker else None,
    )


def collect(
    held: Mapping[str, Held],
    *,
    kinds: Iterable[Kind] = tuple(Kind),
    match: Sequence[str] = (),
    skip_streams: Iterable[str] = (),
) -> Export:
    """Every stream in `held` that passes the filters, as entries or skips.
    `match` globs are tried on the resource name and on the stream name;
    `skip_streams` are left out entirely (what a file already declares)."""
    wanted = set(kinds)
    already = set(skip_streams)
    entries: list[Entry] = []
    skipped: list[Skipped] = []
    for stream in sorted(held):
        if stream in already:
            continue
        result = entry(stream, held[stream])
        if isinstance(result, Skipped):
            kind, name, _ = shape(stream, held[stream].config)
            if kind in wanted and matches(match, name, stream):
                skipped.append(result)
            continue
        if result.kind in wanted and matches(match, result.name, result.stream):
            entries.append(result)
    return Export(entries=tuple(entries), skipped=tuple(skipped))
