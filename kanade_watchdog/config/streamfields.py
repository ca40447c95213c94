"""The field table: every key a declaration takes beyond the classic limits,
with its parser, the nats-server version that brought it, and how it maps
onto the stream config. Also the version of every classic key, for the
server check and the README's reference.

Pure. `config` adds `PARSERS` to its schema and calls `check`/`bind`;
`desired` reads `DEFAULTS`, `implied`, `finish_create`; `serverinfo` reads
`requirements`; `plan` reads `CREATE_ONLY` and the display sets.

Versions are those of the NATS documentation's stream configuration table
(the `Version` column), and for the newer fields the API level the server
itself stamps as `_nats.req.level` on a stream that uses them (measured on
nats-server 2.15.1: allow_msg_ttl and subject_delete_marker_ttl need level 1,
i.e. 2.11; allow_msg_counter, allow_atomic and allow_msg_schedules level 2,
i.e. 2.12).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from kanade_watchdog.config import sources, values
from kanade_watchdog.model.fieldvalues import Items, Table, canon, plain
from kanade_watchdog.model.units import NS_PER_SECOND, format_duration_ns

Parser = Callable[[Any], Any]
Version = tuple[int, int, int]

# The kinds of resource, as `config.Kind` spells them (a StrEnum: these keys
# look up with a Kind too). Plain strings keep `config` free to import this.
STREAM, KV, OBJECT_STORE = "stream", "kv", "object_store"

MIN_MARKER_TTL_NS = NS_PER_SECOND  # the broker refuses a delete-marker TTL under 1s


def _marker_ttl(value: Any) -> int:
    ns = values.duration(value)
    if ns < MIN_MARKER_TTL_NS:
        raise ValueError("must be at least 1s (the broker's minimum)")
    return ns


def _inactive(value: Any) -> int:
    ns = values.duration(value)
    if ns <= 0:
        raise ValueError("must be longer than 0s")
    return ns


def _positive(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**31 - 1:
        raise ValueError("must be a whole number from 1 to 2147483647")
    return value


def _first_seq(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**64 - 1:
        raise ValueError("must be a sequence number of 1 or more")
    return value


def _max_consumers(value: Any) -> int:
    n = values.count(value)
    if n > 2**31 - 1:
        raise ValueError('must be at most 2147483647 (or "unlimited")')
    return n


_consumer_limits = functools.partial(sources.consumer_limits, duration=_inactive, count=_positive)

# New keys per kind, in the order the README lists them. Each parser returns
# the value in the server's units and canonical shape.
PARSERS: dict[str, dict[str, Parser]] = {
    STREAM: {
        "mirror": sources.stream_origin,
        "sources": sources.stream_sources,
        "republish": sources.republish,
        "subject_transform": sources.subject_transform,
        "consumer_limits": _consumer_limits,
        "max_consumers": _max_consumers,
        "no_ack": values.boolean,
        "discard_new_per_subject": values.boolean,
        "allow_msg_ttl": values.boolean,
        "subject_delete_marker_ttl": _marker_ttl,
        "allow_msg_counter": values.boolean,
        "allow_atomic": values.boolean,
        "allow_msg_schedules": values.boolean,
        "mirror_direct": values.boolean,
        "first_seq": _first_seq,
    },
    KV: {
        "metadata": values.metadata,
        "republish": sources.republish,
        "mirror": sources.bucket_origin,
        "sources": sources.bucket_sources,
        "limit_marker_ttl": _marker_ttl,
    },
    OBJECT_STORE: {"metadata": values.metadata},
}

# The version of nats-server that brought each key, per kind.
_V22, _V26, _V262 = (2, 2, 0), (2, 6, 0), (2, 6, 2)
_V210 = (2, 10, 0)
SINCE: dict[str, dict[str, Version]] = {
    STREAM: {
        "subjects": _V22,
        "retention": _V22,
        "storage": _V22,
        "max_age": _V22,
        "max_bytes": _V22,
        "max_msgs": _V22,
        "max_msgs_per_subject": (2, 3, 0),
        "max_msg_size": _V22,
        "discard": _V22,
        "num_replicas": _V22,
        "duplicate_window": _V22,
        "description": (2, 3, 3),
        "compression": _V210,
        "placement": _V22,
        "allow_direct": (2, 9, 0),
        "deny_delete": _V262,
        "deny_purge": _V262,
        "allow_rollup_hdrs": _V262,
        "metadata": _V210,
        "mirror": _V22,
        "sources": _V22,
        "republish": (2, 8, 3),
        "subject_transform": _V210,
        "consumer_limits": _V210,
        "max_consumers": _V22,
        "no_ack": _V22,
        "discard_new_per_subject": (2, 9, 0),
        "allow_msg_ttl": (2, 11, 0),
        "subject_delete_marker_ttl": (2, 11, 0),
        "allow_msg_counter": (2, 12, 0),
        "allow_atomic": (2, 12, 0),
        "allow_msg_schedules": (2, 12, 0),
        "mirror_direct": (2, 9, 0),
        "first_seq": _V210,
    },
    KV: {
        "history": _V26,
        "ttl": _V26,
        "max_bytes": _V26,
        "max_value_size": _V26,
        "storage": _V26,
        "replicas": _V26,
        "compression": _V210,
        "placement": _V26,
        "description": _V26,
        "metadata": _V210,
        "republish": (2, 8, 3),
        "mirror": (2, 9, 0),  # with mirror_direct, as ADR-8 has it
        "sources": _V210,  # with subject transforms
        "limit_marker_ttl": (2, 11, 0),
    },
    OBJECT_STORE: {
        "ttl": _V262,
        "max_bytes": _V262,
        "storage": _V262,
        "replicas": _V262,
        "compression": _V210,
        "placement": _V262,
        "description": _V262,
        "metadata": _V210,
    },
}
# Parts of a value newer than the key itself.
SUBJECT_TRANSFORMS_SINCE: Version = _V210

# What the broker reports when a field is absent (older servers omit them).
DEFAULTS: dict[str, Any] = {
    "max_consumers": -1,
    "no_ack": False,
    "discard_new_per_subject": False,
    "allow_msg_ttl": False,
    "subject_delete_marker_ttl": 0,
    "allow_msg_counter": False,
    "allow_atomic": False,
    "allow_msg_schedules": False,
    "mirror_direct": False,
    "first_seq": 0,
}
# Nested values: read from the broker through `fieldvalues.canon`.
NESTED = frozenset({"mirror", "sources", "republish", "subject_transform", "consumer_limits"})
# Sent at create, never compared afterwards: the broker takes a changed
# first_seq into the config but the stream keeps its sequence (2.15.1).
CREATE_ONLY = frozenset({"first_seq"})
DURATIONS = frozenset({"subject_delete_marker_ttl", "limit_marker_ttl"})
COUNTS = frozenset({"max_consumers"})
# config key -> wire field, where a kind names it differently.
RENAMED: dict[str, dict[str, str]] = {
    KV: {"limit_marker_ttl": "subject_delete_marker_ttl"},
}


def bind(kind: str, name: str, declared: Mapping[str, Any]) -> dict[str, Any]:
    """Values that depend on the resource's own name, filled in after parsing."""
    out = dict(declared)
    if kind == KV and isinstance(out.get("sources"), Items):
        out["sources"] = sources.bind_bucket_sources(name, out["sources"])
    return out


def implied(kind: str, declared: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """wire field -> (config key, value) a declaration owns without naming it:
    a KV limit marker needs message TTLs, a KV mirror serves direct gets."""
    out: dict[str, tuple[str, Any]] = {}
    if kind == KV:
        if "limit_marker_ttl" in declared:
            out["allow_msg_ttl"] = ("allow_msg_ttl", True)
        if "mirror" in declared:
            out["mirror_direct"] = ("mirror_direct", True)
    return out


def with_implied(kind: str, declared: Mapping[str, Any]) -> dict[str, Any]:
    """The declared values with the implied ones, by wire name where implied."""
    return {**declared, **{wire: v for wire, (_k, v) in implied(kind, declared).items()}}


def finish_create(kind: str, declared: Mapping[str, Any], config: dict[str, Any]) -> None:
    """A create config made whole: a mirror (a KV one too) has no subjects."""
    if "mirror" in declared:
        config.pop("subjects", None)
    for wire, (_key, value) in implied(kind, declared).items():
        config[wire] = value


def observed(field: str, value: Any) -> Any:
    """A nested field as the broker reports it, in canonical form; absent
    `sources` and `consumer_limits` read as empty, like the server's own
    omitted defaults."""
    if value is None:
        return Items() if field == "sources" else Table() if field == "consumer_limits" else None
    return canon(value, field)


def readable(kind: str, name: str, key: str, value: Any) -> Any:
    """A nested wire value (`NESTED`) as the config writes it, for export."""
    bucket = name if kind == KV else None
    if key == "mirror":
        return sources.readable_origin(value, bucket=bucket)
    if key == "sources":
        return [sources.readable_origin(v, bucket=bucket) for v in value or ()]
    shaped = plain(canon(value)) if isinstance(value, Mapping) else value
    if key == "consumer_limits" and isinstance(shaped, dict):
        ns = shaped.get("inactive_threshold")
        if isinstance(ns, int) and not isinstance(ns, bool):
            shaped["inactive_threshold"] = format_duration_ns(ns)
    return shaped


def requirements(kind: str, declared: Mapping[str, Any]) -> list[tuple[str, Version]]:
    """(key, version) for everything a declaration uses, including the parts of
    a value newer than its key (a source's subject_transforms)."""
    since = SINCE[kind]
    out = [(key, since[key]) for key in declared if key in since]
    if kind == STREAM:
        mirror = declared.get("mirror")
        if isinstance(mirror, Mapping) and "subject_transforms" in mirror:
            out.append(("mirror.subject_transforms", SUBJECT_TRANSFORMS_SINCE))
        if any("subject_transforms" in s for s in declared.get("sources") or ()):
            out.append(("sources.subject_transforms", SUBJECT_TRANSFORMS_SINCE))
    return out


def version_text(version: Version) -> str:
    return ".".join(str(part) for part in version)
