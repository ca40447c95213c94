"""Desired state: what each declared resource must look like on the broker.

Pure. From a `config.Resource` it derives
- the full stream config to CREATE it with: plain streams from the declared
  fields; KV buckets in the ADR-8 shape and object stores in the ADR-20
  shape, so every official client (the kanade backend's Rust client too)
  can open them;
- the fields that are COMPARED with what the broker holds: only what the
  config declares, plus the few fields that make a bucket a bucket. Server
  defaults and fields another client chose are never drift.
`plan` uses both; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kanade_watchdog.config import streamfields
from kanade_watchdog.model.resources import Kind, Resource, identity_subjects
from kanade_watchdog.model.units import NS_PER_SECOND

TWO_MINUTES_NS = 120 * NS_PER_SECOND

# config key -> broker (JetStream wire) field, where they differ.
_RENAMED: dict[Kind, dict[str, str]] = {
    Kind.STREAM: {},
    Kind.KV: {
        "history": "max_msgs_per_subject",
        "ttl": "max_age",
        "max_value_size": "max_msg_size",
        "replicas": "num_replicas",
    },
    Kind.OBJECT_STORE: {"ttl": "max_age", "replicas": "num_replicas"},
}
for _kind, _renamed in streamfields.RENAMED.items():
    _RENAMED[Kind(_kind)].update(_renamed)

# What the broker reports when a field is absent (older servers omit some).
# Comparisons read observed configs through these, so "absent" == "default".
SERVER_DEFAULTS: dict[str, Any] = {
    "retention": "limits",
    "storage": "file",
    "max_age": 0,
    "max_bytes": -1,
    "max_msgs": -1,
    "max_msgs_per_subject": -1,
    "max_msg_size": -1,
    "discard": "old",
    "num_replicas": 1,
    "duplicate_window": TWO_MINUTES_NS,
    "description": "",
    "compression": "none",
    "allow_direct": False,
    "deny_delete": False,
    "deny_purge": False,
    "allow_rollup_hdrs": False,
    "sealed": False,
    **streamfields.DEFAULTS,
}


# Stream metadata every write carries, so several watchdogs (a rolling
# upgrade: old and new releases side by side) can tell whose spec is newer,
# and one watchdog can tell its own earlier writes from another's. Every key
# under MARKER_PREFIX is the watchdog's own: a config may not declare one.
# Anyone with update rights can write these keys too: what they may make
# the watchdog do is bounded in `plan` (trust model: docs/SECURITY.md).
MARKER_PREFIX = "kanade."
MANAGED_BY_KEY = MARKER_PREFIX + "managed_by"
MANAGED_BY = "kanade-watchdog"
SPEC_VERSION_KEY = MARKER_PREFIX + "spec_version"
SPEC_HASH_KEY = MARKER_PREFIX + "spec_hash"
WRITER_KEY = MARKER_PREFIX + "writer"
MARKER_KEYS = (MANAGED_BY_KEY, SPEC_VERSION_KEY, SPEC_HASH_KEY, WRITER_KEY)


@dataclass(frozen=True)
class Marker:
    """What a watchdog left on a stream the last time it wrote it."""

    spec_version: int
    spec_hash: str
    writer: str | None  # None: written before writers were recorded


def spec_hash(resource: Resource) -> str:
    """A short fingerprint of what the config declares for this resource."""
    text = json.dumps(
        [str(resource.kind), resource.name, sorted(resource.declared.items())],
        sort_keys=True,
        default=list,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def marker(resource: Resource) -> dict[str, str]:
    out = {
        MANAGED_BY_KEY: MANAGED_BY,
        SPEC_VERSION_KEY: str(resource.spec_version),
        SPEC_HASH_KEY: spec_hash(resource),
    }
    if resource.writer:
        out[WRITER_KEY] = resource.writer
    return out


def _stamp(metadata: Mapping[str, Any], resource: Resource) -> dict[str, Any]:
    """`metadata` with this resource's marker; a writer left by an earlier
    write goes when this one records none, so the marker never mixes two."""
    out = {k: v for k, v in metadata.items() if k != WRITER_KEY}
    out.update(marker(resource))
    return out


def observed_marker(config: Mapping[str, Any]) -> Marker | None:
    """The marker a watchdog left on this stream, if any."""
    metadata = config.get("metadata") or {}
    if not isinstance(metadata, Mapping) or metadata.get(MANAGED_BY_KEY) != MANAGED_BY:
        return None
    try:
        version = int(str(metadata.get(SPEC_VERSION_KEY, "")))
    except ValueError:
        return None
    writer = metadata.get(WRITER_KEY)
    return Marker(version, str(metadata.get(SPEC_HASH_KEY, "")), str(writer) if writer else None)


def wire_field(kind: Kind, key: str) -> str:
    return _RENAMED[kind].get(key, key)


def identity(resource: Resource) -> dict[str, Any]:
    """Fields without which the stream is not this kind of resource at all."""
    if "mirror" in resource.declared:  # a KV mirror has no subjects of its own
        return {}
    if resource.kind is Kind.STREAM:
        return {}
    return {"subjects": identity_subjects(resource.kind, resource.name)}


def compared(resource: Resource) -> dict[str, tuple[str, Any]]:
    """broker field -> (config key, desired value) for every field we own.

    Buckets also own `allow_rollup_hdrs`: KV purge and object-store metadata
    writes are rollups, so a bucket without it is broken for every client.
    """
    out: dict[str, tuple[str, Any]] = {}
    if resource.kind is not Kind.STREAM:
        out["allow_rollup_hdrs"] = ("allow_rollup_hdrs", True)
    for key, value in resource.declared.items():
        if key not in streamfields.CREATE_ONLY:
            out[wire_field(resource.kind, key)] = (key, value)
    out.update(streamfields.implied(resource.kind, resource.declared))
    return out


def _to_wire(field: str, value: Any) -> Any:
    """Config-normalized values (tuples) -> JSON shapes the API takes."""
    if field == "subjects":
        return list(value)
    if field == "placement":
        placement = dict(value)
        wire: dict[str, Any] = {}
        if placement.get("cluster"):
            wire["cluster"] = placement["cluster"]
        if placement.get("tags"):
            wire["tags"] = list(placement["tags"])
        return wire
    if field == "metadata":
        return dict(value)
    return value


def _fix_duplicate_window(config: dict[str, Any]) -> None:
    # The broker refuses a dedupe window longer than max_age (KV ttl, object
    # store ttl, short stream windows), so clamp it like the clients do.
    age = config.get("max_age", 0)
    window = config.get("duplicate_window", TWO_MINUTES_NS)
    if age and window > age:
        config["duplicate_window"] = age


def create_config(resource: Resource) -> dict[str, Any]:
    """The complete stream config a create request sends."""
    config: dict[str, Any] = {"name": resource.stream}
    if resource.kind is Kind.KV:
        # ADR-8 "Buckets": history 1 unless declared, discard new so a full
        # bucket refuses writes instead of dropping other keys' values.
        config.update(
            {
                "subjects": list(identity_subjects(resource.kind, resource.name)),
                "retention": "limits",
                "max_msgs_per_subject": 1,
                "max_msgs": -1,
                "max_bytes": -1,
                "max_age": 0,
                "max_msg_size": -1,
                "storage": "file",
                "discard": "new",
                "num_replicas": 1,
                "duplicate_window": TWO_MINUTES_NS,
                "allow_rollup_hdrs": True,
                "deny_delete": True,
                "deny_purge": False,
                "allow_direct": True,
                "mirror_direct": False,
            }
        )
    elif resource.kind is Kind.OBJECT_STORE:
        # ADR-20: chunks under C, metadata under M (rolled up per object).
        config.update(
            {
                "subjects": list(identity_subjects(resource.kind, resource.name)),
                "retention": "limits",
                "max_msgs": -1,
                "max_bytes": -1,
                "max_age": 0,
                "storage": "file",
                "discard": "new",
                "num_replicas": 1,
                "allow_rollup_hdrs": True,
                "allow_direct": True,
            }
        )
    for key, value in resource.declared.items():
        field = wire_field(resource.kind, key)
        config[field] = _to_wire(field, value)
    streamfields.finish_create(resource.kind, resource.declared, config)
    config["metadata"] = _stamp(config.get("metadata", {}), resource)
    _fix_duplicate_window(config)
    return config


def overlay(resource: Resource, observed: Mapping[str, Any]) -> dict[str, Any]:
    """The update to send: the observed config with our fields laid over it.

    An update REPLACES the whole config, so starting from what the broker
    holds keeps every field someone else set (consumer limits, sources,
    metadata keys, allow_msg_ttl...) exactly as it is.
    """
    config = dict(observed)
    for field, (_key, value) in compared(resource).items():
        if field == "metadata":
            merged = dict(config.get("metadata") or {})
            merged.update(dict(value))
            config["metadata"] = merged
        elif field in streamfields.NESTED and same(field, observed_value(observed, field), value):
            # Kept as the broker spells it: a mirror's config must not change
            # by a byte (a start time in another zone is another config to it).
            continue
        else:
            config[field] = _to_wire(field, value)
    config["metadata"] = _stamp(config.get("metadata") or {}, resource)
    _fix_duplicate_window(config)
    return config


def observed_value(config: Mapping[str, Any], field: str) -> Any:
    """A field as the broker holds it, in the same normalized form as
    config values, so equal means equal."""
    if field in streamfields.NESTED:
        return streamfields.observed(field, config.get(field))
    value = config.get(field, SERVER_DEFAULTS.get(field))
    if field == "subjects":
        return tuple(value or ())
    if field == "placement":
        placement = value or {}
        return (
            ("cluster", placement.get("cluster", "") or ""),
            ("tags", tuple(sorted(placement.get("tags") or ()))),
        )
    if field == "metadata":
        return tuple(sorted((value or {}).items()))
    return value


def same(field: str, current: Any, desired: Any) -> bool:
    """Equality as the broker means it."""
    if field == "subjects":
        return set(current) == set(desired)
    if field == "metadata":
        # Only the keys we declare are ours; the server and others add more.
        return set(desired) <= set(current)
    return bool(current == desired)
