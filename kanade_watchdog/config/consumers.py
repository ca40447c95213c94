"""`[consumers.<STREAM>.<DURABLE>]`: durable consumers, parsed and checked
before any network traffic.

Pure. `load.parse` hands the `consumers` table and the declared resources
here and gets `Consumer`s back, every problem reported through `Problems`
with its key path. Field names and shapes are the JetStream API's consumer
config; durations and sizes are written in the readable form.

The checks are the broker's own refusals, moved before the first request
(nats-server `consumer.go`, `checkConsumerCfg`): names, the deliver policy's
start, push-only fields on a pull consumer and pull-only ones on a push
consumer, backoff against max_deliver, and filters that no subject of a
declared stream can ever match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kanade_watchdog.config import values
from kanade_watchdog.config.problems import Parser, Problems, unknown_key
from kanade_watchdog.config.problems import key as _key
from kanade_watchdog.model.consumers import Consumer
from kanade_watchdog.model.subjects import stream_name_problem, subject_problem, subjects_overlap

SECTION = "consumers"
INT32_MAX = 2**31 - 1
MAX_BACKOFF = 64  # a longer list is a mistake, not a policy
# The broker refuses a consumer name with these (`isValidName` and the
# file-store path check); its length is capped like a stream's.

DELIVER_POLICIES = ("all", "last", "new", "by_start_sequence", "by_start_time", "last_per_subject")
# Watchdog settings in a consumer table, not JetStream fields.
WATCHDOG_KEYS = ("resume",)


def durable_problem(name: str) -> str | None:
    """Why the broker would refuse `name` as a durable consumer name, or None:
    the server holds durable names to the stream-name rules."""
    return stream_name_problem(name)


def _positive_duration(value: Any) -> int:
    ns = values.duration(value)
    if ns <= 0:
        raise ValueError("must be longer than 0s")
    return ns


def _whole(lo: int, hi: int = 2**63 - 1) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"must be a whole number from {lo} to {hi}")
        return int(value)

    return parse


def _max_deliver(value: Any) -> int:
    n = values.count(value)  # "unlimited" -> -1, the broker's spelling
    if n > INT32_MAX:
        raise ValueError('must be at most 2147483647 (or "unlimited")')
    return n


def _max_ack_pending(value: Any) -> int:
    n = values.count(value)
    if n > INT32_MAX:
        raise ValueError('must be at most 2147483647 (or "unlimited")')
    return n


def _rfc3339(value: Any) -> str:
    """A TOML date-time (or an RFC 3339 string) with its offset, as the API's text."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("must be a date-time like 2026-01-02T03:04:05Z") from None
    if not isinstance(value, datetime):
        raise ValueError("must be a date-time like 2026-01-02T03:04:05Z")
    if value.tzinfo is None:
        raise ValueError("must carry a time zone offset (e.g. Z)")
    return value.isoformat().replace("+00:00", "Z")


def _subject(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a subject string")
    problem = subject_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _deliver_subject(value: Any) -> str:
    subject = _subject(value)
    if any(t in ("*", ">") for t in subject.split(".")):
        raise ValueError("must be a concrete subject, without wildcards")
    return subject


def _filters(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of subjects")
    out = tuple(_subject(v) for v in value)
    for i, a in enumerate(out):
        for b in out[i + 1 :]:
            if subjects_overlap(a, b):
                raise ValueError(f"{a!r} overlaps {b!r} (the broker refuses overlapping filters)")
    return out


def _backoff(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_BACKOFF:
        raise ValueError(f"must be a list of 1 to {MAX_BACKOFF} durations like '1s'")
    return tuple(_positive_duration(v) for v in value)


def _sample_freq(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"{value}%"
    if not isinstance(value, str) or not re.fullmatch(r"(100|[1-9]?[0-9])%?", value):
        raise ValueError("must be a percentage from 0 to 100, like '10%'")
    return value if value.endswith("%") else value + "%"


def _group_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of group names")
    for v in value:
        if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9/_=-]{1,16}", v):
            raise ValueError("group names are 1 to 16 of letters, digits, '/', '_', '=', '-'")
    return tuple(value)


def _rate(value: Any) -> int:
    n: int = values.size()(value)  # bits per second, written like a size ("1MiB")
    if n < 0:
        raise ValueError("must be a positive rate (leave it out for no limit)")
    return n


def _durable_like(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a name string")
    problem = durable_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# JetStream consumer config fields, in the order the README lists them.
FIELDS: dict[str, Parser] = {
    "description": values.description,
    "deliver_policy": values.enum(*DELIVER_POLICIES),
    "opt_start_seq": _whole(1),
    "opt_start_time": _rfc3339,
    "ack_policy": values.enum("none", "all", "explicit"),
    "ack_wait": _positive_duration,
    "max_deliver": _max_deliver,
    "backoff": _backoff,
    "filter_subject": _subject,
    "filter_subjects": _filters,
    "replay_policy": values.enum("instant", "original"),
    "rate_limit_bps": _rate,
    "sample_freq": _sample_freq,
    "max_waiting": _whole(1, INT32_MAX),
    "max_ack_pending": _max_ack_pending,
    "headers_only": values.boolean,
    "max_batch": _whole(1, INT32_MAX),
    "max_expires": _positive_duration,
    "max_bytes": values.size(),
    "inactive_threshold": _positive_duration,
    "num_replicas": _whole(0, 5),
    "mem_storage": values.boolean,
    "metadata": values.metadata,
    "deliver_subject": _deliver_subject,
    "deliver_group": _durable_like,
    "flow_control": values.boolean,
    "idle_heartbeat": _positive_duration,
    "pause_until": _rfc3339,
    "priority_groups": _group_names,
    "priority_policy": values.enum("none", "overflow", "pinned_client", "prioritized"),
    "priority_timeout": _positive_duration,
}
PUSH_ONLY = ("deliver_group", "flow_control", "idle_heartbeat", "rate_limit_bps")
PULL_ONLY = (
    "max_waiting",
    "max_batch",
    "max_expires",
    "max_bytes",
    "priority_groups",
    "priority_policy",
    "priority_timeout",
)


def _shape_problems(declared: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, reason) for combinations the broker refuses."""
    out: list[tuple[str, str]] = []
    policy = declared.get("deliver_policy", "all")
    if policy == "by_start_sequence" and "opt_start_seq" not in declared:
        out.append(("opt_start_seq", "is required by deliver_policy = 'by_start_sequence'"))
    if policy == "by_start_time" and "opt_start_time" not in declared:
        out.append(("opt_start_time", "is required by deliver_policy = 'by_start_time'"))
    if "opt_start_seq" in declared and policy != "by_start_sequence":
        out.append(("opt_start_seq", "is only for deliver_policy = 'by_start_sequence'"))
    if "opt_start_time" in declared and policy != "by_start_time":
        out.append(("opt_start_time", "is only for deliver_policy = 'by_start_time'"))
    if "filter_subject" in declared and "filter_subjects" in declared:
        out.append(("filter_subjects", "set filter_subject or filter_subjects, not both"))
    push = bool(declared.get("deliver_subject"))
    for key in PUSH_ONLY if not push else PULL_ONLY:
        if key in declared:
            mode = "a pull consumer (no deliver_subject)" if not push else "a push consumer"
            out.append((key, f"is not for {mode}"))
    if push and declared.get("flow_control") and "idle_heartbeat" not in declared:
        out.append(("flow_control", "needs idle_heartbeat (the broker refuses it without)"))
    backoff = declared.get("backoff")
    if backoff:
        max_deliver = declared.get("max_deliver", -1)
        if max_deliver != -1 and max_deliver < len(backoff):
            out.append(("backoff", "has more steps than max_deliver allows (10116)"))
        if declared.get("ack_wait", backoff[0]) != backoff[0]:
            # The broker sets ack_wait to the first step: it would drift forever.
            out.append(("ack_wait", "must equal backoff's first step (or be left out)"))
    policy_set = declared.get("priority_policy", "none") != "none"
    if policy_set and "priority_groups" not in declared:
        out.append(("priority_groups", "is required by priority_policy (10159)"))
    if "priority_groups" in declared and not policy_set:
        out.append(("priority_groups", "needs a priority_policy other than 'none' (10196)"))
    return out


def _filter_problems(
    declared: Mapping[str, Any], stream_subjects: tuple[str, ...] | None
) -> list[tuple[str, str]]:
    """Filters no declared subject of the stream can match. nats-server 2.15
    accepts them, and the consumer would never see a message: a typo."""
    if not stream_subjects:
        return []  # an undeclared stream, a mirror, or one fed by sources only
    out: list[tuple[str, str]] = []
    for key in ("filter_subject", "filter_subjects"):
        value = declared.get(key)
        filters = (value,) if isinstance(value, str) else tuple(value or ())
        for f in filters:
            if not any(subjects_overlap(f, s) for s in stream_subjects):
                shown = ", ".join(repr(s) for s in stream_subjects)
                out.append((key, f"{f!r} matches none of the stream's subjects ({shown})"))
    return out


def _one(
    problems: Problems,
    stream: str,
    durable: str,
    raw: Any,
    stream_subjects: tuple[str, ...] | None,
) -> Consumer | None:
    where = f"{SECTION}.{_key(stream)}.{_key(durable)}"
    problem = durable_problem(durable)
    if problem:
        problems.bad(where, f"durable name {problem}", durable, kind=f"{SECTION}.*.*")
        return None
    if not isinstance(raw, dict):
        problems.bad(where, "must be a table", raw, kind=f"{SECTION}.*.*")
        return None
    declared: dict[str, Any] = {}
    resume = True
    for key, value in raw.items():
        if key == "resume":
            resume = bool(problems.parse(f"{where}.resume", values.boolean, value))
            continue
        parser = FIELDS.get(key)
        if parser is None:
            problems.add(
                f"{where}.{_key(key)}",
                unknown_key(key, [*FIELDS, *WATCHDOG_KEYS]),
                kind=f"{SECTION}.*.*.*",
            )
            continue
        parsed = problems.parse(f"{where}.{key}", parser, value, kind=f"{SECTION}.*.*.{key}")
        if parsed is not None:
            declared[key] = parsed
    for key, reason in _shape_problems(declared) + _filter_problems(declared, stream_subjects):
        if key in raw and key not in declared:
            continue  # its value was refused already: one line is enough
        if key in raw:
            problems.bad(f"{where}.{key}", reason, raw[key], kind=f"{SECTION}.*.*.{key}")
        else:
            problems.add(f"{where}.{key}", reason, kind=f"{SECTION}.*.*.{key}")
    return Consumer(stream=stream, durable=durable, declared=declared, resume=resume)


def parse(
    problems: Problems, section: Any, subjects_of: Mapping[str, tuple[str, ...]]
) -> list[Consumer]:
    """Every consumer under `[consumers]`. `subjects_of` maps each declared
    stream (by its broker name: `KV_b` for bucket b) to its subjects, empty
    when it listens on none of its own (a mirror)."""
    if section is None:
        return []
    if not isinstance(section, dict):
        problems.bad(SECTION, "must be a table of streams", section)
        return []
    out: list[Consumer] = []
    for stream, table in section.items():
        where = f"{SECTION}.{_key(stream)}"
        problem = stream_name_problem(stream)
        if problem:
            problems.bad(where, f"stream name {problem}", stream, kind=f"{SECTION}.*")
            continue
        if not isinstance(table, dict) or not table:
            problems.bad(where, "must be a table of durable consumers", table, kind=f"{SECTION}.*")
            continue
        for durable, raw in table.items():
            consumer = _one(problems, stream, durable, raw, subjects_of.get(stream))
            if consumer is not None:
                out.append(consumer)
    return out
