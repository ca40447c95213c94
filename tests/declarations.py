"""Hypothesis strategies for valid declarations: resource tables as an operator
writes them (readable durations and sizes, "unlimited", booleans, text).

The value space follows `config.FIELDS` per kind, bounded so that a single
test broker accepts every example (one replica, no placement: a lone server
has no peers to place on, and max_bytes reservations must fit its store).
`single_server=False` widens it for the pure tests. Used by test_export
(pure round trip) and test_export_integration (through a real broker).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

from kanade_watchdog.model.resources import SECTION, Kind
from kanade_watchdog.model.units import NS_PER_SECOND, format_duration_ns, parse_duration_ns

DURATIONS = ["100ms", "1500ms", "1s", "45s", "2m", "90m", "1h30m", "12h", "1d", "90d", "2w"]
SIZES = ["1", "512", "1KiB", "1.5KiB", "64KiB", "1MiB", "10MB", "32MiB"]


def _text(max_size: int) -> st.SearchStrategy[str]:
    # Any character a UTF-8 file can hold (no lone surrogates).
    return st.text(st.characters(codec="utf-8"), max_size=max_size)


def durations() -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(DURATIONS), st.integers(1, 10**7))


def sizes(limit: int = 64 * 1024**2) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from([*SIZES, "unlimited"]),
        st.integers(1, limit),
    )


def counts() -> st.SearchStrategy[Any]:
    return st.one_of(st.just("unlimited"), st.integers(1, 10**6))


def _ns(value: Any) -> int:
    return value * NS_PER_SECOND if isinstance(value, int) else parse_duration_ns(value)


def metadata() -> st.SearchStrategy[dict[str, str]]:
    keys = _text(12).filter(lambda k: not k.startswith(("_nats", "kanade.")))
    return st.dictionaries(keys, _text(20), max_size=3)


def placement() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "cluster": st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True),
            "tags": st.lists(st.from_regex(r"[a-z][a-z0-9:]{0,8}", fullmatch=True), max_size=3),
        },
    )


def _common(single_server: bool) -> dict[str, st.SearchStrategy[Any]]:
    out: dict[str, st.SearchStrategy[Any]] = {
        "storage": st.sampled_from(["file", "memory"]),
        "compression": st.sampled_from(["none", "s2"]),
        "description": _text(40),
    }
    if not single_server:
        out["placement"] = placement()
    return out


@st.composite
def stream_table(draw: st.DrawFn, index: int, *, single_server: bool = True) -> dict[str, Any]:
    optional: dict[str, st.SearchStrategy[Any]] = {
        **_common(single_server),
        "retention": st.sampled_from(["limits", "interest", "workqueue"]),
        "max_age": st.one_of(st.just(0), durations()),
        "max_bytes": sizes(),
        "max_msgs": counts(),
        "max_msgs_per_subject": counts(),
        "max_msg_size": sizes(1024**2),
        "discard": st.sampled_from(["old", "new"]),
        "num_replicas": st.just(1) if single_server else st.integers(1, 5),
        "duplicate_window": durations(),
        "allow_direct": st.booleans(),
        "deny_delete": st.booleans(),
        "deny_purge": st.booleans(),
        "allow_rollup_hdrs": st.booleans(),
        "metadata": metadata(),
        **_newer_stream_fields(index),
    }
    table = draw(
        st.fixed_dictionaries(
            {"subjects": st.just([f"p{index}.>", f"q{index}.*.x"])}, optional=optional
        )
    )
    _fit_newer_stream_fields(table, mirror=draw(st.integers(0, 4)) == 0)
    if table.get("allow_rollup_hdrs") and table.get("deny_purge"):
        # The broker refuses this pair ("roll-ups require the purge permission",
        # 10052) although the config accepts it.
        del table["deny_purge"]
    age, window = table.get("max_age"), table.get("duplicate_window")
    if window is not None and age and _ns(window) > _ns(age):
        table["duplicate_window"] = format_duration_ns(_ns(age))  # the config requires <=
    return table


# Origins nobody declares: the broker takes a mirror or source of a stream that
# does not exist (it keeps retrying), so any name is safe here.
_ORIGINS = ["ORIGIN_A", "ORIGIN_B"]


def _origin(index: int) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.fixed_dictionaries(
            {"name": st.sampled_from(_ORIGINS)},
            optional={
                "opt_start_seq": st.integers(1, 10**6),
                "opt_start_time": st.sampled_from(
                    ["2025-01-01T00:00:00Z", "2025-06-01T12:30:00.25+02:00"]
                ),
                "filter_subject": st.sampled_from(["o.a.>", "o.*"]),
                "domain": st.sampled_from(["hub", "leaf"]),
            },
        ),
        st.fixed_dictionaries(
            {
                "name": st.sampled_from(_ORIGINS),
                "subject_transforms": st.just(
                    [{"src": "o.*", "dest": f"p{index}.o.{{{{wildcard(1)}}}}"}]
                ),
            }
        ),
    )


def _newer_stream_fields(index: int) -> dict[str, st.SearchStrategy[Any]]:
    """The fields beyond the classic limits (nats-server 2.15.1 takes them all)."""
    return {
        "sources": st.lists(
            _origin(index), max_size=2, unique_by=lambda o: (o["name"], o.get("domain"))
        ),
        "republish": st.fixed_dictionaries(
            {"src": st.just(f"p{index}.>"), "dest": st.just(f"rp{index}.>")},
            optional={"headers_only": st.booleans()},
        ),
        "subject_transform": st.just({"src": f"p{index}.in.>", "dest": f"p{index}.kept.>"}),
        "consumer_limits": st.fixed_dictionaries(
            {},
            optional={"inactive_threshold": durations(), "max_ack_pending": st.integers(1, 10**4)},
        ),
        "max_consumers": counts(),
        "no_ack": st.booleans(),
        "discard_new_per_subject": st.booleans(),
        "allow_msg_ttl": st.booleans(),
        "subject_delete_marker_ttl": st.sampled_from(["1s", "90s", "1h"]),
        "allow_atomic": st.booleans(),
        "first_seq": st.integers(1, 10**6),
    }


def _fit_newer_stream_fields(table: dict[str, Any], *, mirror: bool) -> None:
    """Drop what the broker refuses together (the config refuses it too)."""
    if table.get("discard_new_per_subject") and (
        table.get("discard") != "new"
        or table.get("max_msgs_per_subject", "unlimited") == "unlimited"
    ):
        del table["discard_new_per_subject"]
    if "subject_delete_marker_ttl" in table and not (
        table.get("allow_msg_ttl") and table.get("allow_rollup_hdrs")
    ):
        del table["subject_delete_marker_ttl"]
    if mirror:  # a mirror has no subjects, sources, first sequence or markers of its own
        for key in (
            "subjects",
            "sources",
            "first_seq",
            "subject_delete_marker_ttl",
            "allow_atomic",
        ):
            table.pop(key, None)
        table["mirror"] = {"name": _ORIGINS[0]}


def kv_table(*, single_server: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            **_common(single_server),
            "history": st.integers(1, 64),
            "ttl": st.one_of(st.just(0), durations()),
            "max_bytes": sizes(),
            "max_value_size": sizes(1024**2),
            "replicas": st.just(1) if single_server else st.integers(1, 5),
            "metadata": metadata(),
            "limit_marker_ttl": st.sampled_from(["1s", "30s", "1h"]),
        },
    )


def object_store_table(*, single_server: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            **_common(single_server),
            "ttl": st.one_of(st.just(0), durations()),
            "max_bytes": sizes(),
            "replicas": st.just(1) if single_server else st.integers(1, 5),
            "metadata": metadata(),
        },
    )


@st.composite
def declarations(
    draw: st.DrawFn, *, single_server: bool = True, max_each: int = 2
) -> dict[str, dict[str, dict[str, Any]]]:
    """{section: {name: table}}: a few streams, KV buckets and object stores."""
    n_streams = draw(st.integers(0, max_each))
    n_kv = draw(st.integers(0, max_each))
    n_obj = draw(st.integers(1 if n_streams + n_kv == 0 else 0, max_each))
    return {
        SECTION[Kind.STREAM]: {
            f"S{i}": draw(stream_table(i, single_server=single_server)) for i in range(n_streams)
        },
        SECTION[Kind.KV]: {
            f"kv{i}": draw(kv_table(single_server=single_server)) for i in range(n_kv)
        },
        SECTION[Kind.OBJECT_STORE]: {
            f"obj{i}": draw(object_store_table(single_server=single_server)) for i in range(n_obj)
        },
    }


def is_default(key: str, declared: Mapping[str, Any]) -> bool:
    """Whether `declared[key]` (parsed: ns, bytes, -1) is the value nobody has to
    declare, written out by hand rather than read from the code under test."""
    value = declared[key]
    age = declared.get("max_age", declared.get("ttl", 0))
    two_minutes = 120 * NS_PER_SECOND
    window = age if 0 < age < two_minutes else two_minutes
    defaults: dict[str, Any] = {
        "retention": "limits",
        "storage": "file",
        "max_age": 0,
        "ttl": 0,
        "max_bytes": -1,
        "max_msgs": -1,
        "max_msgs_per_subject": -1,
        "max_msg_size": -1,
        "max_value_size": -1,
        "discard": "old",
        "num_replicas": 1,
        "replicas": 1,
        "history": 1,
        "duplicate_window": window,
        "description": "",
        "compression": "none",
        "allow_direct": False,
        "deny_delete": False,
        "deny_purge": False,
        "allow_rollup_hdrs": False,
        "metadata": (),
        "placement": (("cluster", ""), ("tags", ())),
        "sources": (),
        "consumer_limits": {},
        "max_consumers": -1,
        "no_ack": False,
        "discard_new_per_subject": False,
        "allow_msg_ttl": False,
        "allow_atomic": False,
    }
    return bool(defaults[key] == value)
