"""Export without a broker: broker-shaped stream infos in, a declaration out.

The configs below are STREAM.LIST entries as nats-server 2.15.1 reported them
for streams and buckets that nats-py 2.16 created. The round trip is judged
by the project's own parser and planner: what export writes must parse, and
every exported resource must plan as in sync against the config it came from.
"""

from __future__ import annotations

import copy
import tomllib
from datetime import datetime
from typing import Any

import pytest
import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kanade_watchdog.config.load import parse
from kanade_watchdog.core import desired
from kanade_watchdog.core.export import (
    Entry,
    Export,
    Held,
    Skipped,
    collect,
    entry,
    exact_size,
)
from kanade_watchdog.core.plan import Action, Observed, decide
from kanade_watchdog.core.undeclared import undeclared
from kanade_watchdog.model.resources import Kind, Resource
from kanade_watchdog.model.secret import Secret
from kanade_watchdog.model.settings import NatsSettings, TlsSettings
from kanade_watchdog.model.units import parse_size_bytes
from kanade_watchdog.report.declaration import MergeError, merge, nats_table, render
from tests.declarations import declarations, is_default

NOW = datetime(2026, 1, 2, 3, 4, 5)
SEC = 10**9
CREATED = "2026-11-27T17:54:08.244393262Z"

STREAM: dict[str, Any] = {
    "name": "S1",
    "subjects": ["s1.>"],
    "retention": "limits",
    "max_consumers": -1,
    "max_msgs": -1,
    "max_bytes": -1,
    "max_age": 0,
    "max_msgs_per_subject": -1,
    "max_msg_size": -1,
    "discard": "old",
    "storage": "file",
    "num_replicas": 1,
    "duplicate_window": 120 * SEC,
    "compression": "none",
    "allow_direct": False,
    "mirror_direct": False,
    "sealed": False,
    "deny_delete": False,
    "deny_purge": False,
    "allow_rollup_hdrs": False,
    "consumer_limits": {},
    "allow_msg_ttl": False,
    "metadata": {"_nats.req.level": "0"},
}
# create_key_value(history=5) by nats-py: allow_direct false, allow_msg_ttl true.
NATS_PY_KV: dict[str, Any] = {
    **STREAM,
    "name": "KV_jobs",
    "subjects": ["$KV.jobs.>"],
    "max_msgs_per_subject": 5,
    "discard": "new",
    "deny_delete": True,
    "allow_rollup_hdrs": True,
    "allow_msg_ttl": True,
    "metadata": {"_nats.req.level": "1"},
}
NATS_PY_OBJ: dict[str, Any] = {
    **STREAM,
    "name": "OBJ_blobs",
    "subjects": ["$O.blobs.C.>", "$O.blobs.M.>"],
    "discard": "new",
    "allow_direct": True,
    "allow_rollup_hdrs": True,
}


def held(config: dict[str, Any], **state: Any) -> Held:
    return Held(config=config, state={"messages": 0, "bytes": 0, **state}, created=CREATED)


def stream(**fields: Any) -> dict[str, Any]:
    return {**copy.deepcopy(STREAM), **fields}


def only(export: Export) -> Entry:
    assert len(export.entries) == 1, export
    return export.entries[0]


def exported(*configs: dict[str, Any]) -> Export:
    return collect({c["name"]: held(c) for c in configs})


def reparsed(export: Export) -> dict[str, Resource]:
    """The rendered declaration read back by the config parser, by stream."""
    text = render(export, settings=NatsSettings(), now=NOW)
    config = parse(tomllib.loads(text), "export.toml")
    return {r.stream: r for r in config.resources}


def assert_in_sync(configs: list[dict[str, Any]]) -> None:
    resources = reparsed(exported(*configs))
    assert set(resources) == {c["name"] for c in configs}
    for config in configs:
        decision = decide(resources[config["name"]], Observed(config=config), NOW)
        assert decision.action is Action.IN_SYNC, (config["name"], decision)


# --- shapes --------------------------------------------------------------------------


def test_buckets_are_recognised_by_shape_and_defaults_left_out() -> None:
    """KV_<b> with $KV.<b>.> and OBJ_<b> with $O.<b>.C/M are buckets; a stream and
    buckets holding only defaults export their identity and nothing else."""
    export = exported(stream(), copy.deepcopy(NATS_PY_KV), copy.deepcopy(NATS_PY_OBJ))
    by_stream = {e.stream: e for e in export.entries}
    assert {(e.kind, e.name) for e in export.entries} == {
        (Kind.STREAM, "S1"),
        (Kind.KV, "jobs"),
        (Kind.OBJECT_STORE, "blobs"),
    }
    assert by_stream["S1"].values == {"subjects": ["s1.>"]}
    assert by_stream["KV_jobs"].values == {"history": 5}
    assert by_stream["OBJ_blobs"].values == {}
    # nats-py's own bucket choices are not reported as left out.
    assert all(not e.left_out for e in export.entries), export


def test_js_client_kv_shape_is_the_same_bucket() -> None:
    """The JS client's KV (allow_direct, no deny_delete, no msg ttl) exports the same."""
    js = {**NATS_PY_KV, "allow_direct": True, "deny_delete": False, "allow_msg_ttl": False}
    assert only(exported(js)).values == {"history": 5}
    assert not only(exported(js)).left_out


def test_bucket_name_without_the_shape_is_a_plain_stream() -> None:
    """KV_x without rollup headers would plan as drifted if declared as a bucket, so it
    is exported as a plain stream with a note; KV_y with foreign subjects is a stream."""
    no_rollup = {**NATS_PY_KV, "allow_rollup_hdrs": False}
    result = only(exported(no_rollup))
    assert (result.kind, result.name) == (Kind.STREAM, "KV_jobs")
    assert "rollup" in result.note
    other = only(exported(stream(name="KV_y", subjects=["y.>"])))
    assert (other.kind, other.name, other.note) == (Kind.STREAM, "KV_y", "")
    assert_in_sync([no_rollup, stream(name="KV_y", subjects=["y.>"])])


# --- values --------------------------------------------------------------------------


def test_every_declarable_stream_field_is_written_readably() -> None:
    """Each field that differs from the server default is written, durations and sizes
    in readable units, metadata without the server's and the watchdog's keys."""
    config = stream(
        subjects=["a.>", "b.*"],
        retention="interest",
        storage="memory",
        max_age=90 * 86400 * SEC,
        max_bytes=1024**3,
        max_msgs=1000,
        max_msgs_per_subject=3,
        max_msg_size=1536,
        discard="new",
        num_replicas=3,
        duplicate_window=30 * SEC,
        description='say "hi"\nline two',
        compression="s2",
        placement={"cluster": "east", "tags": ["ssd", "az:1"]},
        allow_direct=True,
        deny_delete=True,
        deny_purge=True,  # roll-ups stay off: the broker refuses them with deny_purge
        metadata={
            "_nats.req.level": "0",
            "kanade.managed_by": "kanade-watchdog",
            "kanade.spec_version": "1",
            "kanade.writer": "host-a",
            "owner": "ops",
        },
    )
    result = only(exported(config))
    assert result.values == {
        "subjects": ["a.>", "b.*"],
        "retention": "interest",
        "storage": "memory",
        "max_age": "90d",
        "max_bytes": "1GiB",
        "max_msgs": 1000,
        "max_msgs_per_subject": 3,
        "max_msg_size": 1536,
        "discard": "new",
        "num_replicas": 3,
        "duplicate_window": "30s",
        "description": 'say "hi"\nline two',
        "compression": "s2",
        "placement": {"cluster": "east", "tags": ["ssd", "az:1"]},
        "allow_direct": True,
        "deny_delete": True,
        "deny_purge": True,
        "metadata": {"owner": "ops"},
    }
    assert not result.left_out
    assert_in_sync([config])


def test_server_owned_and_marker_metadata_never_appear() -> None:
    """`_nats.*` and every `kanade.` key stay out of the text, even when they are the
    only metadata (no empty metadata table is written either)."""
    config = stream(metadata={"_nats.ver": "2.15.1", "kanade.managed_by": "kanade-watchdog"})
    text = render(exported(config), settings=NatsSettings(), now=NOW)
    assert "_nats" not in text
    assert "kanade." not in text
    assert "metadata" not in text


def test_kv_bucket_keys_use_bucket_words() -> None:
    """A KV bucket's fields come out under the config's bucket keys."""
    config = {
        **NATS_PY_KV,
        "max_age": 3600 * SEC,
        "max_bytes": 10 * 1000**2,
        "max_msg_size": 1024,
        "storage": "memory",
        "num_replicas": 3,
        "description": "jobs",
        "compression": "s2",
    }
    assert only(exported(config)).values == {
        "history": 5,
        "ttl": "1h",
        "max_bytes": "10MB",
        "max_value_size": "1KiB",
        "storage": "memory",
        "replicas": 3,
        "compression": "s2",
        "description": "jobs",
    }
    assert_in_sync([config])


def test_short_ttl_bucket_window_is_the_shape_not_a_left_out_field() -> None:
    """A KV with ttl 30s has a 30s dedupe window (every client clamps it): that is
    the shape, so it is neither written nor reported."""
    config = {**NATS_PY_KV, "max_age": 30 * SEC, "duplicate_window": 30 * SEC}
    result = only(exported(config))
    assert result.values == {"history": 5, "ttl": "30s"}
    assert not result.left_out


def test_stream_window_clamped_to_a_short_max_age_is_a_default() -> None:
    """The broker shortens the 2m default window to a 1m max_age by itself."""
    config = stream(max_age=60 * SEC, duplicate_window=60 * SEC)
    assert only(exported(config)).values == {"subjects": ["s1.>"], "max_age": "1m"}


@given(st.integers(1, 2**63 - 1))
def test_exact_size_reads_back_to_the_same_byte_count(n: int) -> None:
    """A size written by export parses to exactly the bytes the broker holds."""
    written = exact_size(n)
    assert parse_size_bytes(str(written)) == n


@pytest.mark.parametrize(
    ("n", "text"),
    [(1, 1), (1023, 1023), (1024, "1KiB"), (1536, 1536), (3000, "3kB"), (2 * 1024**3, "2GiB")],
)
def test_exact_size_picks_the_largest_exact_unit(n: int, text: Any) -> None:
    """Binary units first, then decimal ones, else the byte count."""
    assert exact_size(n) == text


# --- what cannot be declared -----------------------------------------------------------


def test_every_declarable_field_is_exported_and_unknown_ones_reported() -> None:
    """allow_msg_ttl, republish, subject_transform, max_consumers and consumer limits
    are written in the config's own shape and units; a field this release does not
    know is named in a comment; the stream plans in sync against its export."""
    config = stream(
        allow_msg_ttl=True,
        allow_rollup_hdrs=True,
        subject_delete_marker_ttl=90 * SEC,
        republish={"src": "s1.>", "dest": "copy.>", "headers_only": False},
        subject_transform={"src": "s1.>", "dest": "t.>"},
        max_consumers=10,
        consumer_limits={"inactive_threshold": 1000},
        no_ack=True,
        first_seq=42,
        future_field="x",
        max_age=3600 * SEC,
    )
    result = only(exported(config))
    assert result.left_out == ('future_field = "x"',)
    assert result.values["republish"] == {"dest": "copy.>", "src": "s1.>"}
    assert result.values["consumer_limits"] == {"inactive_threshold": "1us"}
    assert result.values["subject_delete_marker_ttl"] == "90s"
    assert (result.values["max_consumers"], result.values["first_seq"]) == (10, 42)
    text = render(exported(config), settings=NatsSettings(), now=NOW)
    assert '# left out (not declarable yet): future_field = "x"' in text
    assert_in_sync([config])


def test_placement_keys_beyond_cluster_and_tags_are_reported() -> None:
    """A placement preference the config cannot declare is named, the rest written."""
    config = stream(placement={"cluster": "east", "preferred": "n2"})
    result = only(exported(config))
    assert result.values["placement"] == {"cluster": "east"}
    assert result.left_out == ('placement.preferred = "n2"',)
    assert_in_sync([config])


def test_bucket_metadata_is_exported_without_the_servers_keys() -> None:
    """Metadata on a bucket is written, the server's `_nats.*` keys left out."""
    config = {**NATS_PY_KV, "metadata": {"_nats.req.level": "1", "team": "ops"}}
    result = only(exported(config))
    assert result.values["metadata"] == {"team": "ops"}
    assert result.left_out == ()
    assert_in_sync([config])


@pytest.mark.parametrize(
    ("fields", "values"),
    [
        (
            {"mirror": {"name": "ORDERS", "opt_start_seq": 5}, "subjects": []},
            {"mirror": {"name": "ORDERS", "opt_start_seq": 5}},
        ),
        (
            {
                "mirror": {"name": "ORDERS", "external": {"api": "$JS.hub.API", "deliver": ""}},
                "mirror_direct": True,
                "subjects": [],
            },
            {"mirror": {"name": "ORDERS", "domain": "hub"}, "mirror_direct": True},
        ),
        (
            {"sources": [{"name": "A"}, {"name": "B", "filter_subject": "b.x"}]},
            {
                "subjects": ["s1.>"],
                "sources": [{"name": "A"}, {"name": "B", "filter_subject": "b.x"}],
            },
        ),
        (
            {
                "subjects": [],
                "sources": [
                    {"name": "A", "subject_transforms": [{"src": "a.>", "dest": "s1.a.>"}]}
                ],
            },
            {"sources": [{"name": "A", "subject_transforms": [{"src": "a.>", "dest": "s1.a.>"}]}]},
        ),
    ],
    ids=["mirror", "mirror-of-a-domain", "sources", "sources-without-subjects"],
)
def test_mirrors_and_sourced_streams_are_exported(
    fields: dict[str, Any], values: dict[str, Any]
) -> None:
    """A mirror (no subjects of its own) and a sourced stream are written in the
    server's shape, a domain as `domain`, and plan in sync against their export."""
    config = stream(name="X", **fields)
    result = only(exported(config))
    assert dict(result.values) == values
    assert result.left_out == ()
    assert_in_sync([config])


def test_kv_limit_marker_republish_and_metadata_are_exported() -> None:
    """A bucket's delete-marker TTL reads back as limit_marker_ttl (its message TTLs
    are the shape's, not a left-out field), with republish and metadata."""
    config = {
        **NATS_PY_KV,
        "subject_delete_marker_ttl": 30 * SEC,
        "republish": {"src": "$KV.jobs.>", "dest": "seen.>"},
        "metadata": {"team": "x"},
    }
    result = only(exported(config))
    assert dict(result.values) == {
        "history": 5,
        "metadata": {"team": "x"},
        "republish": {"dest": "seen.>", "src": "$KV.jobs.>"},
        "limit_marker_ttl": "30s",
    }
    assert result.left_out == ()
    assert_in_sync([config])


def test_kv_mirror_and_sourced_bucket_are_exported_in_the_adr8_shape() -> None:
    """A KV mirror (stream KV_copy mirroring KV_jobs, no subjects, mirror_direct) and a
    bucket sourced from another (the ADR-8 transform) are buckets, named by bucket."""
    mirror = {
        **NATS_PY_KV,
        "name": "KV_copy",
        "subjects": [],
        "mirror": {"name": "KV_jobs"},
        "mirror_direct": True,
    }
    merged = {
        **NATS_PY_KV,
        "name": "KV_all",
        "subjects": ["$KV.all.>"],
        "sources": [
            {"name": "KV_jobs", "subject_transforms": [{"src": "$KV.jobs.>", "dest": "$KV.all.>"}]}
        ],
    }
    export = exported(mirror, merged)
    by_name = {e.name: e for e in export.entries}
    assert by_name["copy"].kind is Kind.KV
    assert by_name["copy"].values["mirror"] == {"name": "jobs"}
    assert by_name["all"].values["sources"] == [{"name": "jobs"}]
    assert all(not e.left_out for e in export.entries), export
    assert_in_sync([mirror, merged])


def test_value_the_config_refuses_is_left_out_with_a_reason() -> None:
    """A 50ms max_age (the config accepts 0 or >= 100ms) is reported, not written."""
    config = stream(max_age=50_000_000, duplicate_window=50_000_000)
    result = only(exported(config))
    assert "max_age" not in result.values
    assert any(item.startswith('max_age = "50ms"') for item in result.left_out)
    assert_in_sync([config])


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"sealed": True}, "sealed (it can no longer be changed, so it is not managed)"),
        ({"subjects": ["$JS.API.>"]}, 'subjects ["$JS.API.>"] cannot be declared'),
    ],
    ids=["sealed", "reserved-subjects"],
)
def test_undeclarable_streams_are_skipped_with_the_reason(
    fields: dict[str, Any], reason: str
) -> None:
    """A stream the language cannot express is skipped whole and the text says why."""
    config = stream(name="X", **fields)
    export = exported(config)
    assert export.entries == ()
    assert export.skipped == (Skipped("X", reason),)
    text = render(export, settings=NatsSettings(), now=NOW)
    assert f"# stream X: not exported: {reason}" in text.splitlines()
    assert "[streams" not in text


def test_leaderless_stream_is_skipped() -> None:
    """A stream listed by name only (no leader) cannot be read: skipped, said so."""
    result = entry("S1", Held(config={"name": "S1"}, leaderless=True))
    assert isinstance(result, Skipped)
    assert "no leader" in result.reason


def test_holdings_comment_names_messages_bytes_and_creation() -> None:
    """Each resource's table starts with what the broker holds."""
    export = collect({"S1": held(stream(), messages=12, bytes=3 * 1024**2, consumer_count=2)})
    text = render(export, settings=NatsSettings(), now=NOW)
    assert (
        "# stream S1 holds 12 messages, 3MiB, 2 consumers (not exported), "
        "created 2026-11-27 17:54:08Z"
    ) in text


# --- filters -------------------------------------------------------------------------


def test_match_and_kind_filters() -> None:
    """--match globs try the resource name and the stream name; --kind keeps kinds."""
    configs = {
        c["name"]: held(c)
        for c in (
            stream(name="ORDERS", subjects=["o.>"]),
            stream(name="OTHER", subjects=["x.>"]),
            copy.deepcopy(NATS_PY_KV),
            copy.deepcopy(NATS_PY_OBJ),
            stream(name="M", mirror={"name": "ORDERS"}, sealed=True),
        )
    }
    streams = {e.stream for e in collect(configs, match=["ORD*"]).entries}
    assert streams == {"ORDERS"}
    assert {e.stream for e in collect(configs, match=["jobs"]).entries} == {"KV_jobs"}
    assert {e.stream for e in collect(configs, match=["KV_*", "blobs"]).entries} == {
        "KV_jobs",
        "OBJ_blobs",
    }
    only_kv = collect(configs, kinds=[Kind.KV])
    assert {e.stream for e in only_kv.entries} == {"KV_jobs"}
    assert only_kv.skipped == ()  # the mirror is a stream
    assert [s.stream for s in collect(configs, kinds=[Kind.STREAM]).skipped] == ["M"]
    assert collect(configs, match=["ORD*"]).skipped == ()


# --- spec_version --------------------------------------------------------------------


def test_highest_marker_spec_version_is_declared_so_plan_stays_in_sync() -> None:
    """Resources a watchdog stamped with spec_version 3 export with spec_version = 3;
    declared at the default 1 they would plan as "newer spec present"."""
    marked = stream(metadata={**desired.marker(Resource(Kind.STREAM, "S1", {}, spec_version=3))})
    text = render(exported(marked), settings=NatsSettings(), now=NOW)
    document = tomllib.loads(text)
    assert document["spec_version"] == 3
    resource = parse(document, "x.toml").resources[0]
    assert decide(resource, Observed(config=marked), NOW).action is Action.IN_SYNC
    stale = parse({**document, "spec_version": 1}, "x.toml").resources[0]
    assert decide(stale, Observed(config=marked), NOW).action is Action.NEWER_SPEC


# --- [nats] ----------------------------------------------------------------------------


def test_nats_section_has_paths_but_never_a_secret() -> None:
    """Inline tokens and passwords are not written (a comment says so); files, user,
    domain, TLS paths and non-default timeouts are."""
    secret = "s3cr3t-T0KEN-value"
    inline = NatsSettings(servers=("nats://a:4222", "nats://b:4222"), token=Secret(secret))
    text = tomlkit.dumps(nats_table(inline))
    assert secret not in text
    assert "token" not in tomllib.loads(text)
    assert "a token was used" in text
    from_file = NatsSettings(
        token=Secret(secret),
        token_file="$CREDENTIALS_DIRECTORY/nats-token",
        jetstream_domain="hub",
        request_timeout=5.0,
        name="adopt",
        tls=TlsSettings(ca_file="/etc/ca.pem", cert_file="/c.pem", key_file="/k.pem", verify=False),
    )
    text = tomlkit.dumps(nats_table(from_file))
    assert secret not in text
    assert tomllib.loads(text) == {
        "servers": ["nats://127.0.0.1:4222"],
        "name": "adopt",
        "request_timeout": "5s",
        "jetstream_domain": "hub",
        "token_file": "$CREDENTIALS_DIRECTORY/nats-token",
        "tls": {
            "ca_file": "/etc/ca.pem",
            "cert_file": "/c.pem",
            "key_file": "/k.pem",
            "verify": False,
        },
    }
    password = NatsSettings(user="ops", password=Secret(secret))
    text = tomlkit.dumps(nats_table(password))
    assert secret not in text
    assert tomllib.loads(text)["user"] == "ops"
    assert "password" not in tomllib.loads(text)


# --- merge -----------------------------------------------------------------------------

ORIGINAL = """\
# The fleet's declaration: hand-written, reviewed.
spec_version = 1

[nats]   # where the broker is
servers = ["nats://127.0.0.1:4222"]

[streams.S1]
subjects = ["s1.>"]      # oddly   spaced, kept as is
max_age  = "90d"

# trailing comment without a newline"""


def test_merge_keeps_the_file_byte_for_byte_and_adds_what_it_lacks() -> None:
    """The original text is an exact prefix; what follows declares only the rest."""
    configs = [stream(max_age=10), stream(name="S2", subjects=["s2.>"]), NATS_PY_KV]
    export = collect({c["name"]: held(c) for c in configs}, skip_streams={"S1"})
    merged = merge(ORIGINAL, export, now=NOW)
    assert merged.startswith(ORIGINAL + "\n")
    document = tomllib.loads(merged)
    assert document["streams"]["S1"] == {"subjects": ["s1.>"], "max_age": "90d"}
    assert document["streams"]["S2"] == {"subjects": ["s2.>"]}
    assert document["kv_buckets"]["jobs"] == {"history": 5}
    assert document["nats"] == {"servers": ["nats://127.0.0.1:4222"]}


def test_merge_with_nothing_to_add_returns_the_text_unchanged() -> None:
    """No new resource: not even a comment is appended."""
    export = collect({"S1": held(stream())}, skip_streams={"S1"})
    assert merge(ORIGINAL, export, now=NOW) is ORIGINAL


def test_merge_into_an_inline_section_is_refused() -> None:
    """`streams = {...}` cannot be extended by a [streams.X] header: one clear error."""
    text = 'streams = { S1 = { subjects = ["s1.>"] } }\n'
    export = collect({"S2": held(stream(name="S2", subjects=["s2.>"]))})
    with pytest.raises(MergeError, match="do not fit"):
        merge(text, export, now=NOW)


# --- undeclared ------------------------------------------------------------------------


def test_undeclared_lists_what_no_resource_is_backed_by() -> None:
    """Kinds come from the stream names; declared and ignored ones are left out."""
    observed = ["ORDERS", "KV_jobs", "OBJ_blobs", "KV_x.y", "AUDIT", "KV_"]
    assert undeclared({"ORDERS"}, observed) == [
        (Kind.STREAM, "AUDIT"),
        (Kind.STREAM, "KV_"),
        (Kind.KV, "jobs"),
        (Kind.STREAM, "KV_x.y"),
        (Kind.OBJECT_STORE, "blobs"),
    ]
    assert undeclared({"ORDERS", "KV_jobs"}, observed, ["KV_*", "blob*", "AUD?T"]) == []
    assert undeclared(set(), [], ["*"]) == []


# --- the round trip as a property ------------------------------------------------------

# What nats-server 2.15.1 adds to a created stream's config.
_SERVER_ADDS = {
    "max_consumers": -1,
    "mirror_direct": False,
    "sealed": False,
    "consumer_limits": {},
    "allow_msg_ttl": False,
}


def as_broker_holds(resource: Resource) -> dict[str, Any]:
    """The config the broker reports for a resource the watchdog created."""
    config = {**desired.SERVER_DEFAULTS, **_SERVER_ADDS, **desired.create_config(resource)}
    config["metadata"] = {**config["metadata"], "_nats.req.level": "0"}
    if not config.get("placement"):
        config.pop("placement", None)
    return config


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(declarations(single_server=False, max_each=3))
def test_created_declarations_export_back_to_themselves(
    document: dict[str, dict[str, dict[str, Any]]],
) -> None:
    """Any valid declaration, created as the watchdog creates it, exports to a file
    that parses, plans in sync, and declares exactly the non-default values."""
    original = {r.stream: r for r in parse(document, "in.toml").resources}
    configs = {stream: as_broker_holds(r) for stream, r in original.items()}
    back = reparsed(collect({s: held(c) for s, c in configs.items()}))
    assert set(back) == set(original)
    for name, resource in back.items():
        assert decide(resource, Observed(config=configs[name]), NOW).action is Action.IN_SYNC
        before = original[name].declared
        for key, value in resource.declared.items():
            assert key in before, (name, key, value)  # nothing invented
            assert before[key] == value, (name, key)
        for key in set(before) - set(resource.declared):
            assert is_default(key, before), (name, key, before[key])
