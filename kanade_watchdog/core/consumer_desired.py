"""Desired state for a durable consumer: the config to create it with, the
fields compared, and the update laid over what the broker holds.

Pure. The consumer's marker uses the same metadata keys as a stream's
(`desired.MANAGED_BY_KEY` and the rest), so one reading of a marker serves
both. A consumer re-created where it left off also carries `RESUMED_KEY`:
the sequence it resumed from, which tells the planner that its
deliver_policy by_start_sequence is the resume, not drift.
`consumer_plan` decides with these; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kanade_watchdog.core import desired
from kanade_watchdog.model.consumers import Consumer

RESUMED_KEY = desired.MARKER_PREFIX + "resumed_from"
# The fields a resume replaces: compared as in sync on a resumed consumer.
START_FIELDS = ("deliver_policy", "opt_start_seq", "opt_start_time")

# What the broker means by an absent field (it omits empty ones).
SERVER_DEFAULTS: dict[str, Any] = {
    "description": "",
    "deliver_policy": "all",
    "opt_start_seq": 0,
    "opt_start_time": None,
    "ack_policy": "none",
    "ack_wait": 0,
    "max_deliver": -1,
    "backoff": (),
    "filter_subject": "",
    "filter_subjects": (),
    "replay_policy": "instant",
    "rate_limit_bps": 0,
    "sample_freq": "",
    "max_waiting": 0,
    "max_ack_pending": 0,
    "headers_only": False,
    "max_batch": 0,
    "max_expires": 0,
    "max_bytes": 0,
    "inactive_threshold": 0,
    "num_replicas": 0,
    "mem_storage": False,
    "metadata": (),
    "deliver_subject": "",
    "deliver_group": "",
    "flow_control": False,
    "idle_heartbeat": 0,
    "pause_until": None,
    "priority_groups": (),
    "priority_policy": "none",
    "priority_timeout": 0,
}


def spec_hash(consumer: Consumer) -> str:
    text = json.dumps(
        ["consumer", consumer.stream, consumer.durable, sorted(consumer.declared.items())],
        sort_keys=True,
        default=list,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def marker(consumer: Consumer) -> dict[str, str]:
    out = {
        desired.MANAGED_BY_KEY: desired.MANAGED_BY,
        desired.SPEC_VERSION_KEY: str(consumer.spec_version),
        desired.SPEC_HASH_KEY: spec_hash(consumer),
    }
    if consumer.writer:
        out[desired.WRITER_KEY] = consumer.writer
    return out


def _wire(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def _filters(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The filters in force, however they are spelled (one filter may come
    back as `filter_subject` after being sent as a one-element list)."""
    many = config.get("filter_subjects") or ()
    one = config.get("filter_subject") or ""
    return tuple(sorted(many)) if many else ((one,) if one else ())


def observed_value(config: Mapping[str, Any], field: str) -> Any:
    """A field as the broker holds it, normalized like a declared value."""
    if field in ("filter_subject", "filter_subjects"):
        return _filters(config)
    value = config.get(field, SERVER_DEFAULTS.get(field))
    if value is None:
        return SERVER_DEFAULTS.get(field)
    if field == "metadata":
        return tuple(sorted((value or {}).items()))
    if isinstance(value, list):
        return tuple(value)
    return value


def declared_value(consumer: Consumer, field: str) -> Any:
    value = consumer.declared[field]
    if field == "filter_subject":
        return (value,)
    if field == "filter_subjects":
        return tuple(sorted(value))
    return value


def same(field: str, current: Any, wanted: Any) -> bool:
    if field == "metadata":  # only the declared keys are ours
        return set(wanted) <= set(current)
    if field in ("opt_start_time", "pause_until") and current and wanted:
        return _instant(str(current)) == _instant(str(wanted))
    return bool(current == wanted)


def _instant(text: str) -> str:
    try:
        return datetime.fromisoformat(text).isoformat()
    except ValueError:
        return text


def resumed_from(config: Mapping[str, Any]) -> int | None:
    """The sequence a watchdog resumed this consumer from, if it did."""
    metadata = config.get("metadata") or {}
    try:
        return int(str(metadata[RESUMED_KEY]))
    except (KeyError, ValueError):
        return None


def create_config(consumer: Consumer, *, resume_from: int | None = None) -> dict[str, Any]:
    """The config to create the consumer with: exactly the declared fields,
    the durable name and the marker; started at `resume_from` when given."""
    config: dict[str, Any] = {"durable_name": consumer.durable}
    for field, value in consumer.declared.items():
        config[field] = dict(value) if field == "metadata" else _wire(value)
    metadata = dict(config.get("metadata") or {})
    metadata.update(marker(consumer))
    if resume_from is not None:
        for field in START_FIELDS:
            config.pop(field, None)
        config["deliver_policy"] = "by_start_sequence"
        config["opt_start_seq"] = resume_from
        metadata[RESUMED_KEY] = str(resume_from)
    config["metadata"] = metadata
    return config


def overlay(consumer: Consumer, observed: Mapping[str, Any]) -> dict[str, Any]:
    """The update to send: the observed config with the declared fields laid
    over it. An update replaces the whole config; starting from the broker's
    keeps every field an application chose, and its resume record."""
    config = dict(observed)
    for field, value in consumer.declared.items():
        if field == "metadata":
            merged = dict(config.get("metadata") or {})
            merged.update(dict(value))
            config["metadata"] = merged
        else:
            config[field] = _wire(value)
    # The broker refuses both spellings at once: the declared one wins.
    if "filter_subject" in consumer.declared:
        config.pop("filter_subjects", None)
    if "filter_subjects" in consumer.declared:
        config.pop("filter_subject", None)
    metadata = {k: v for k, v in (config.get("metadata") or {}).items() if k != desired.WRITER_KEY}
    metadata.update(marker(consumer))
    config["metadata"] = metadata
    return config
