"""The planner: one decision per resource from desired + observed, with every
safety rule (immutable fields, foreign or sealed streams, data at stake,
protect) exercised against broker-shaped observed configs."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kanade_watchdog.config.load import load, parse
from kanade_watchdog.core.desired import marker
from kanade_watchdog.core.plan import Action, Change, Observed, decide, plan
from kanade_watchdog.model.errors import ConfigError
from kanade_watchdog.model.resources import Kind, Resource

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"

SEC = 1_000_000_000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR
MIB = 1024**2
GIB = 1024**3

NOW = datetime(2025, 6, 1, 12, 0, 0)

# A real STREAM.LIST entry from nats-server 2.15.1.
BROKER_STREAM: dict[str, Any] = {
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
    "duplicate_window": 120000000000,
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

# KV_jobs as nats-py 2.16 creates it (create_key_value(history=5)), read back
# from nats-server 2.15.1.
NATS_PY_KV: dict[str, Any] = {
    "name": "KV_jobs",
    "subjects": ["$KV.jobs.>"],
    "retention": "limits",
    "max_consumers": -1,
    "max_msgs": -1,
    "max_bytes": -1,
    "max_age": 0,
    "max_msgs_per_subject": 5,
    "max_msg_size": -1,
    "discard": "new",
    "storage": "file",
    "num_replicas": 1,
    "duplicate_window": 120000000000,
    "compression": "none",
    "allow_direct": False,
    "mirror_direct": False,
    "sealed": False,
    "deny_delete": True,
    "deny_purge": False,
    "allow_rollup_hdrs": True,
    "consumer_limits": {},
    "allow_msg_ttl": True,
    "metadata": {"_nats.level": "5", "_nats.req.level": "1", "_nats.ver": "2.15.1"},
}

# OBJ_blobs as nats-py 2.16 creates it, read back from nats-server 2.15.1.
NATS_PY_OBJ: dict[str, Any] = {
    "name": "OBJ_blobs",
    "subjects": ["$O.blobs.C.>", "$O.blobs.M.>"],
    "retention": "limits",
    "max_consumers": -1,
    "max_msgs": -1,
    "max_bytes": -1,
    "max_age": 0,
    "max_msgs_per_subject": -1,
    "max_msg_size": -1,
    "discard": "new",
    "storage": "file",
    "num_replicas": 1,
    "duplicate_window": 120000000000,
    "compression": "none",
    "allow_direct": True,
    "mirror_direct": False,
    "sealed": False,
    "deny_delete": False,
    "deny_purge": False,
    "allow_rollup_hdrs": True,
    "consumer_limits": {},
    "allow_msg_ttl": False,
    "metadata": {"_nats.level": "5", "_nats.req.level": "0", "_nats.ver": "2.15.1"},
}


def broker_stream(**fields: Any) -> dict[str, Any]:
    """Stream S1 as the broker reports it, with `fields` changed."""
    config = copy.deepcopy(BROKER_STREAM)
    config.update(fields)
    return config


def nats_py_kv(**fields: Any) -> dict[str, Any]:
    """KV bucket 'jobs' as nats-py created it, with `fields` changed."""
    config = copy.deepcopy(NATS_PY_KV)
    config.update(fields)
    return config


def js_kv(**fields: Any) -> dict[str, Any]:
    """KV bucket 'jobs' as the official JS client v3 creates it."""
    return nats_py_kv(
        allow_direct=True,
        deny_delete=False,
        allow_msg_ttl=False,
        metadata={"_nats.level": "1", "_nats.req.level": "0", "_nats.ver": "2.15.1"},
        **fields,
    )


def nats_py_obj(**fields: Any) -> dict[str, Any]:
    """Object store 'blobs' as nats-py created it, with `fields` changed."""
    config = copy.deepcopy(NATS_PY_OBJ)
    config.update(fields)
    return config


def stream(*, protect: bool = False, **declared: Any) -> Resource:
    """Stream S1 declared with subjects s1.> and `declared` (config keys, broker units)."""
    return Resource(Kind.STREAM, "S1", {"subjects": ("s1.>",), **declared}, protect=protect)


def kv(*, protect: bool = False, **declared: Any) -> Resource:
    return Resource(Kind.KV, "jobs", declared, protect=protect)


def obj(*, protect: bool = False, **declared: Any) -> Resource:
    return Resource(Kind.OBJECT_STORE, "blobs", declared, protect=protect)


def seen(config: dict[str, Any], **state: Any) -> Observed:
    return Observed(config=config, state=state)


def stored(messages: int, size: int, oldest: datetime | None = None) -> dict[str, Any]:
    """A stream state as the broker reports it (Go timestamps with nanoseconds)."""
    first = oldest or NOW - timedelta(minutes=5)
    return {
        "messages": messages,
        "bytes": size,
        "first_seq": 1,
        "first_ts": first.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z",
        "last_seq": messages,
        "last_ts": NOW.strftime("%Y-%m-%dT%H:%M:%S.000000001Z"),
        "consumer_count": 0,
    }


EMPTY_STATE: dict[str, Any] = {
    "messages": 0,
    "bytes": 0,
    "first_seq": 0,
    "first_ts": "0001-01-01T00:00:00Z",
    "last_seq": 0,
    "last_ts": "0001-01-01T00:00:00Z",
    "consumer_count": 0,
}


# --- the decision table -----------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    action: Action
    changes: tuple[tuple[str, Any, Any], ...] = ()
    reason: tuple[str, ...] = ()  # substrings of Decision.reason ("" when none)
    at_stake: tuple[str, ...] = ()  # substrings of the at_stake lines (() when none)


def case(
    id_: str, resource: Resource, observed: Observed | None, expect: Expect
) -> Any:  # pytest's ParameterSet is not public
    return pytest.param(resource, observed, expect, id=id_)


CASES = [
    # missing -> create
    case("missing-stream", stream(max_age=DAY), None, Expect(Action.CREATE)),
    case("missing-kv", kv(history=5), None, Expect(Action.CREATE)),
    case("missing-object-store", obj(), None, Expect(Action.CREATE)),
    # in sync despite server fields, metadata and defaults
    case(
        "in-sync-server-extras",
        stream(max_age=90 * DAY, max_bytes=GIB, discard="old"),
        seen(broker_stream(max_age=90 * DAY, max_bytes=GIB)),
        Expect(Action.IN_SYNC),
    ),
    case(
        "in-sync-metadata-subset",
        stream(metadata=(("owner", "ops"),)),
        seen(broker_stream(metadata={"_nats.req.level": "0", "owner": "ops", "team": "x"})),
        Expect(Action.IN_SYNC),
    ),
    case(
        "in-sync-subjects-any-order",
        Resource(Kind.STREAM, "S1", {"subjects": ("a.>", "b.>")}),
        seen(broker_stream(subjects=["b.>", "a.>"])),
        Expect(Action.IN_SYNC),
    ),
    case(
        "in-sync-older-server-omits-defaults",
        stream(
            retention="limits",
            storage="file",
            discard="old",
            max_bytes=-1,
            max_msgs=-1,
            max_age=0,
            description="",
            compression="none",
            num_replicas=1,
            duplicate_window=2 * MIN,
            deny_delete=False,
            allow_rollup_hdrs=False,
        ),
        seen({"name": "S1", "subjects": ["s1.>"]}),
        Expect(Action.IN_SYNC),
    ),
    case(
        "in-sync-placement-tags-unordered",
        stream(placement=(("cluster", "c1"), ("tags", ("a", "b")))),
        seen(broker_stream(placement={"cluster": "c1", "tags": ["b", "a"]})),
        Expect(Action.IN_SYNC),
    ),
    case(
        "in-sync-empty-placement",
        stream(placement=(("cluster", ""), ("tags", ()))),
        seen(broker_stream()),
        Expect(Action.IN_SYNC),
    ),
    case("in-sync-kv-by-nats-py", kv(history=5), seen(nats_py_kv()), Expect(Action.IN_SYNC)),
    case("in-sync-kv-by-js-client", kv(history=5), seen(js_kv()), Expect(Action.IN_SYNC)),
    case(
        "in-sync-kv-undeclared-fields-are-not-ours",
        kv(),
        seen(js_kv(max_msgs_per_subject=10, max_bytes=MIB, num_replicas=3)),
        Expect(Action.IN_SYNC),
    ),
    case(
        "in-sync-kv-ttl-and-caps",
        kv(history=5, ttl=HOUR, max_bytes=GIB, max_value_size=MIB, replicas=1),
        seen(nats_py_kv(max_age=HOUR, max_bytes=GIB, max_msg_size=MIB)),
        Expect(Action.IN_SYNC),
    ),
    case("in-sync-object-store", obj(), seen(nats_py_obj()), Expect(Action.IN_SYNC)),
    case(
        "in-sync-object-store-capped",
        obj(ttl=30 * DAY, max_bytes=GIB),
        seen(nats_py_obj(max_age=30 * DAY, max_bytes=GIB)),
        Expect(Action.IN_SYNC),
    ),
    # drift -> update, named by config key
    case(
        "drift-max-age",
        stream(max_age=90 * DAY),
        seen(broker_stream(max_age=30 * DAY)),
        Expect(Action.UPDATE, (("max_age", 30 * DAY, 90 * DAY),)),
    ),
    case(
        "drift-subjects",
        stream(),
        seen(broker_stream(subjects=["s1.>", "x.>"])),
        Expect(Action.UPDATE, (("subjects", ("s1.>", "x.>"), ("s1.>",)),)),
    ),
    case(
        "drift-two-fields",
        stream(max_bytes=GIB, discard="new"),
        seen(broker_stream()),
        Expect(Action.UPDATE, (("max_bytes", -1, GIB), ("discard", "old", "new"))),
    ),
    case(
        "drift-metadata-key-missing",
        stream(metadata=(("owner", "ops"),)),
        seen(broker_stream()),
        Expect(
            Action.UPDATE,
            (("metadata", (("_nats.req.level", "0"),), (("owner", "ops"),)),),
        ),
    ),
    case(
        "drift-placement",
        stream(placement=(("cluster", "c1"), ("tags", ()))),
        seen(broker_stream()),
        Expect(
            Action.UPDATE,
            (
                (
                    "placement",
                    (("cluster", ""), ("tags", ())),
                    (("cluster", "c1"), ("tags", ())),
                ),
            ),
        ),
    ),
    case(
        "drift-retention-limits-to-interest",
        stream(retention="interest"),
        seen(broker_stream()),
        Expect(Action.UPDATE, (("retention", "limits", "interest"),)),
    ),
    case(
        "drift-deny-delete-turned-on",
        stream(deny_delete=True),
        seen(broker_stream()),
        Expect(Action.UPDATE, (("deny_delete", False, True),)),
    ),
    case(
        "drift-kv-history",
        kv(history=5),
        seen(nats_py_kv(max_msgs_per_subject=1)),
        Expect(Action.UPDATE, (("history", 1, 5),)),
    ),
    case(
        "drift-kv-ttl",
        kv(ttl=HOUR),
        seen(js_kv()),
        Expect(Action.UPDATE, (("ttl", 0, HOUR),)),
    ),
    case(
        "drift-kv-replicas-and-value-size",
        kv(replicas=3, max_value_size=MIB),
        seen(nats_py_kv()),
        Expect(Action.UPDATE, (("replicas", 1, 3), ("max_value_size", -1, MIB))),
    ),
    case(
        "drift-kv-lost-rollup",
        kv(),
        seen(nats_py_kv(allow_rollup_hdrs=False)),
        Expect(Action.UPDATE, (("allow_rollup_hdrs", False, True),)),
    ),
    case(
        "drift-object-store-ttl",
        obj(ttl=30 * DAY, max_bytes=GIB),
        seen(nats_py_obj(max_bytes=GIB)),
        Expect(Action.UPDATE, (("ttl", 0, 30 * DAY),)),
    ),
    # blocked: the broker cannot make it in place
    case(
        "blocked-storage",
        stream(storage="memory"),
        seen(broker_stream()),
        Expect(
            Action.BLOCKED,
            (("storage", "file", "memory"),),
            ("storage cannot change from file to memory",),
        ),
    ),
    case(
        "blocked-limits-to-workqueue",
        stream(retention="workqueue"),
        seen(broker_stream()),
        Expect(Action.BLOCKED, (("retention", "limits", "workqueue"),), ("retention",)),
    ),
    case(
        "blocked-workqueue-to-limits",
        stream(retention="limits"),
        seen(broker_stream(retention="workqueue")),
        Expect(Action.BLOCKED, (("retention", "workqueue", "limits"),), ("workqueue",)),
    ),
    case(
        "blocked-workqueue-to-interest",
        stream(retention="interest"),
        seen(broker_stream(retention="workqueue")),
        Expect(Action.BLOCKED, (("retention", "workqueue", "interest"),), ("workqueue",)),
    ),
    case(
        "blocked-deny-delete-off",
        stream(deny_delete=False),
        seen(broker_stream(deny_delete=True)),
        Expect(Action.BLOCKED, (("deny_delete", True, False),), ("deny_delete",)),
    ),
    case(
        "blocked-deny-purge-off",
        stream(deny_purge=False),
        seen(broker_stream(deny_purge=True)),
        Expect(Action.BLOCKED, (("deny_purge", True, False),), ("deny_purge",)),
    ),
    case(
        "blocked-immutable-among-others",
        stream(storage="memory", max_age=DAY),
        seen(broker_stream()),
        Expect(
            Action.BLOCKED,
            (("storage", "file", "memory"), ("max_age", 0, DAY)),
            ("storage",),
        ),
    ),
    case(
        "blocked-sealed",
        stream(max_age=DAY),
        seen(broker_stream(sealed=True)),
        Expect(Action.BLOCKED, reason=("sealed",)),
    ),
    case(
        "blocked-sealed-even-in-sync",
        stream(),
        seen(broker_stream(sealed=True)),
        Expect(Action.BLOCKED, reason=("sealed",)),
    ),
    case(
        "blocked-mirror",
        stream(max_age=DAY),
        seen(broker_stream(mirror={"name": "UPSTREAM"}, subjects=[])),
        Expect(Action.BLOCKED, reason=("mirror",)),
    ),
    case(
        "blocked-kv-name-taken",
        Resource(Kind.KV, "x", {"history": 1}),
        seen(broker_stream(name="KV_x", subjects=["foo.>"])),
        Expect(Action.BLOCKED, reason=("KV_x", "not a KV bucket", "foo.>")),
    ),
    case(
        "blocked-kv-name-taken-by-other-bucket",
        Resource(Kind.KV, "x", {}),
        seen(nats_py_kv(name="KV_x")),
        Expect(Action.BLOCKED, reason=("not a KV bucket", "$KV.jobs.>")),
    ),
    case(
        "blocked-object-store-half-shape",
        obj(),
        seen(nats_py_obj(subjects=["$O.blobs.C.>"])),
        Expect(Action.BLOCKED, reason=("OBJ_blobs", "not an object store")),
    ),
    # data at stake: update, spelt out
    case(
        "stake-max-bytes",
        stream(max_bytes=512 * MIB),
        seen(broker_stream(max_bytes=GIB), **stored(5000, 800 * MIB)),
        Expect(
            Action.UPDATE,
            (("max_bytes", GIB, 512 * MIB),),
            at_stake=("288MiB of 800MiB stored", "cap of 512MiB", "discarded"),
        ),
    ),
    case(
        "stake-max-bytes-from-unlimited",
        stream(max_bytes=GIB),
        seen(broker_stream(), **stored(9000, 3 * GIB)),
        Expect(Action.UPDATE, (("max_bytes", -1, GIB),), at_stake=("2GiB of 3GiB stored",)),
    ),
    case(
        "stake-max-msgs",
        stream(max_msgs=600),
        seen(broker_stream(), **stored(1000, MIB)),
        Expect(Action.UPDATE, (("max_msgs", -1, 600),), at_stake=("400 of 1000 messages", "600")),
    ),
    case(
        "stake-max-age",
        stream(max_age=30 * DAY),
        seen(broker_stream(max_age=90 * DAY), **stored(10, MIB, NOW - timedelta(days=45))),
        Expect(
            Action.UPDATE,
            (("max_age", 90 * DAY, 30 * DAY),),
            at_stake=("older than 30d", "2025-04-17 12:00:00Z"),
        ),
    ),
    case(
        "stake-kv-history",
        kv(history=1),
        seen(nats_py_kv(), **stored(42, 4096)),
        Expect(Action.UPDATE, (("history", 5, 1),), at_stake=("beyond 1", "42 messages")),
    ),
    case(
        "stake-kv-ttl",
        kv(ttl=DAY),
        seen(nats_py_kv(), **stored(3, 300, NOW - timedelta(days=2))),
        Expect(Action.UPDATE, (("ttl", 0, DAY),), at_stake=("older than 1d",)),
    ),
    case(
        "stake-object-store-bytes-discard-new",
        obj(max_bytes=GIB),
        seen(nats_py_obj(max_bytes=5 * GIB), **stored(70, 2 * GIB)),
        Expect(
            Action.UPDATE,
            (("max_bytes", 5 * GIB, GIB),),
            at_stake=("1GiB of 2GiB stored", "new writes would be refused"),
        ),
    ),
    # no data at stake
    case(
        "no-stake-max-age-all-young",
        stream(max_age=30 * DAY),
        seen(broker_stream(max_age=90 * DAY), **stored(10, MIB, NOW - timedelta(days=29))),
        Expect(Action.UPDATE, (("max_age", 90 * DAY, 30 * DAY),)),
    ),
    case(
        "no-stake-max-bytes-still-fits",
        stream(max_bytes=GIB),
        seen(broker_stream(max_bytes=2 * GIB), **stored(10, 900 * MIB)),
        Expect(Action.UPDATE, (("max_bytes", 2 * GIB, GIB),)),
    ),
    case(
        "no-stake-raising-limits",
        stream(max_bytes=2 * GIB, max_msgs=-1, max_age=90 * DAY),
        seen(
            broker_stream(max_bytes=GIB, max_msgs=10, max_age=DAY),
            **stored(10, GIB, NOW - timedelta(days=1)),
        ),
        Expect(
            Action.UPDATE,
            (("max_bytes", GIB, 2 * GIB), ("max_msgs", 10, -1), ("max_age", DAY, 90 * DAY)),
        ),
    ),
    case(
        "no-stake-kv-history-raised",
        kv(history=10),
        seen(nats_py_kv(), **stored(42, 4096)),
        Expect(Action.UPDATE, (("history", 5, 10),)),
    ),
    case(
        "no-stake-empty-stream",
        stream(max_bytes=MIB, max_msgs=1, max_age=SEC, max_msgs_per_subject=1),
        seen(broker_stream(max_age=90 * DAY), **EMPTY_STATE),
        Expect(
            Action.UPDATE,
            (
                ("max_bytes", -1, MIB),
                ("max_msgs", -1, 1),
                ("max_age", 90 * DAY, SEC),
                ("max_msgs_per_subject", -1, 1),
            ),
        ),
    ),
    case(
        "no-stake-empty-stream-protected",
        stream(protect=True, max_bytes=MIB, max_age=SEC),
        seen(broker_stream(max_age=90 * DAY), **EMPTY_STATE),
        Expect(Action.UPDATE, (("max_bytes", -1, MIB), ("max_age", 90 * DAY, SEC))),
    ),
    case(
        "no-stake-empty-kv-protected",
        kv(protect=True, history=1),
        seen(nats_py_kv(), **EMPTY_STATE),
        Expect(Action.UPDATE, (("history", 5, 1),)),
    ),
    case(
        "no-stake-protected-harmless-update",
        stream(protect=True, max_bytes=2 * GIB),
        seen(broker_stream(max_bytes=GIB), **stored(10, GIB)),
        Expect(Action.UPDATE, (("max_bytes", GIB, 2 * GIB),)),
    ),
    # data at stake on a protected resource: blocked
    case(
        "protect-max-bytes",
        stream(protect=True, max_bytes=512 * MIB),
        seen(broker_stream(max_bytes=GIB), **stored(5000, 800 * MIB)),
        Expect(
            Action.BLOCKED,
            (("max_bytes", GIB, 512 * MIB),),
            reason=("protect = true", "288MiB of 800MiB"),
            at_stake=("288MiB of 800MiB stored",),
        ),
    ),
    case(
        "protect-max-msgs",
        stream(protect=True, max_msgs=600),
        seen(broker_stream(), **stored(1000, MIB)),
        Expect(
            Action.BLOCKED,
            (("max_msgs", -1, 600),),
            reason=("protect = true", "400 of 1000"),
            at_stake=("400 of 1000 messages",),
        ),
    ),
    case(
        "protect-max-age",
        stream(protect=True, max_age=30 * DAY),
        seen(broker_stream(max_age=90 * DAY), **stored(10, MIB, NOW - timedelta(days=45))),
        Expect(
            Action.BLOCKED,
            (("max_age", 90 * DAY, 30 * DAY),),
            reason=("protect = true", "older than 30d"),
            at_stake=("older than 30d",),
        ),
    ),
    case(
        "protect-kv-history",
        kv(protect=True, history=1),
        seen(nats_py_kv(), **stored(42, 4096)),
        Expect(
            Action.BLOCKED,
            (("history", 5, 1),),
            reason=("protect = true", "42 messages"),
            at_stake=("42 messages",),
        ),
    ),
]


@pytest.mark.parametrize(("resource", "observed", "expect"), CASES)
def test_decide(resource: Resource, observed: Observed | None, expect: Expect) -> None:
    """decide() picks the documented action, diff, reason and data-at-stake for each case."""
    before = copy.deepcopy(observed.config) if observed else None
    decision = decide(resource, observed, NOW)

    assert decision.resource is resource
    assert decision.action is expect.action
    assert [(c.field, c.current, c.desired) for c in decision.changes] == list(expect.changes)
    if expect.reason:
        for text in expect.reason:
            assert text in decision.reason
    else:
        assert decision.reason == ""
    stakes = "\n".join(decision.at_stake)
    if expect.at_stake:
        for text in expect.at_stake:
            assert text in stakes
    else:
        assert decision.at_stake == ()
    assert decision.writes is (expect.action in (Action.CREATE, Action.UPDATE))
    assert (decision.send is not None) is decision.writes
    if observed is not None:
        assert observed.config == before, "decide() must not modify what it observed"


# --- what create sends --------------------------------------------------------------


def created(resource: Resource) -> dict[str, Any]:
    decision = decide(resource, None, NOW)
    assert decision.action is Action.CREATE
    assert decision.send is not None
    return dict(decision.send)


def test_create_kv_is_adr8_shaped() -> None:
    """A missing KV bucket is created as ADR-8 says: $KV.b.>, discard new, rollups,
    deny_delete, direct gets, one revision unless declared."""
    send = created(Resource(Kind.KV, "jobs", {}))
    assert send["name"] == "KV_jobs"
    assert send["subjects"] == ["$KV.jobs.>"]
    assert send["discard"] == "new"
    assert send["allow_rollup_hdrs"] is True
    assert send["deny_delete"] is True
    assert send["allow_direct"] is True
    assert send["max_msgs_per_subject"] == 1
    assert send["retention"] == "limits"
    assert send["storage"] == "file"
    assert send["max_age"] == 0
    assert send["duplicate_window"] == 2 * MIN


@pytest.mark.parametrize(
    ("declared", "wire"),
    [
        ({"history": 5}, {"max_msgs_per_subject": 5}),
        ({"history": 64}, {"max_msgs_per_subject": 64}),
        ({"ttl": HOUR}, {"max_age": HOUR, "duplicate_window": 2 * MIN}),
        ({"ttl": 30 * SEC}, {"max_age": 30 * SEC, "duplicate_window": 30 * SEC}),
        ({"ttl": 2 * MIN}, {"max_age": 2 * MIN, "duplicate_window": 2 * MIN}),
        ({"max_value_size": MIB}, {"max_msg_size": MIB}),
        ({"max_bytes": GIB}, {"max_bytes": GIB}),
        ({"replicas": 3}, {"num_replicas": 3}),
        ({"storage": "memory"}, {"storage": "memory"}),
        ({"compression": "s2"}, {"compression": "s2"}),
        ({"description": "jobs"}, {"description": "jobs"}),
        (
            {"placement": (("cluster", "c1"), ("tags", ("a", "b")))},
            {"placement": {"cluster": "c1", "tags": ["a", "b"]}},
        ),
    ],
    ids=lambda v: ",".join(v) if isinstance(v, dict) else None,
)
def test_create_kv_maps_config_keys_to_wire_fields(
    declared: dict[str, Any], wire: dict[str, Any]
) -> None:
    """KV config keys land on their JetStream fields, and no config-only key is sent."""
    send = created(Resource(Kind.KV, "jobs", declared))
    for field, value in wire.items():
        assert send[field] == value
    for key in declared.keys() - wire.keys():
        assert key not in send
    assert send["subjects"] == ["$KV.jobs.>"]
    assert send["discard"] == "new"


def test_create_object_store_is_adr20_shaped() -> None:
    """A missing object store is created as ADR-20 says: C and M subjects, discard new,
    rollups and direct gets."""
    send = created(Resource(Kind.OBJECT_STORE, "blobs", {}))
    assert send["name"] == "OBJ_blobs"
    assert send["subjects"] == ["$O.blobs.C.>", "$O.blobs.M.>"]
    assert send["discard"] == "new"
    assert send["allow_rollup_hdrs"] is True
    assert send["allow_direct"] is True
    assert send["max_bytes"] == -1
    assert send["max_age"] == 0


def test_create_object_store_ttl_and_cap() -> None:
    """An object store's ttl and max_bytes become max_age and max_bytes; a short ttl
    clamps the dedupe window."""
    send = created(Resource(Kind.OBJECT_STORE, "blobs", {"ttl": 30 * DAY, "max_bytes": GIB}))
    assert send["max_age"] == 30 * DAY
    assert send["max_bytes"] == GIB
    assert "ttl" not in send
    short = created(Resource(Kind.OBJECT_STORE, "blobs", {"ttl": 10 * SEC}))
    assert short["duplicate_window"] == 10 * SEC


def test_create_stream_sends_declared_fields() -> None:
    """A missing stream is created with its declared fields, subjects as a JSON list."""
    resource = stream(
        max_age=90 * DAY,
        max_bytes=GIB,
        discard="old",
        metadata=(("owner", "ops"),),
        placement=(("cluster", ""), ("tags", ("ssd",))),
    )
    send = created(resource)
    assert send == {
        "name": "S1",
        "subjects": ["s1.>"],
        "max_age": 90 * DAY,
        "max_bytes": GIB,
        "discard": "old",
        "metadata": {"owner": "ops", **marker(resource)},
        "placement": {"tags": ["ssd"]},
    }


def test_create_stream_clamps_duplicate_window_to_short_max_age() -> None:
    """A stream whose max_age is under 2 minutes is created with the window = max_age."""
    assert created(stream(max_age=MIN))["duplicate_window"] == MIN
    assert "duplicate_window" not in created(stream(max_age=HOUR))


# --- what update sends ----------------------------------------------------------------


def updated(resource: Resource, observed: dict[str, Any]) -> dict[str, Any]:
    decision = decide(resource, Observed(config=observed), NOW)
    assert decision.action is Action.UPDATE
    assert decision.send is not None
    return dict(decision.send)


def test_update_sends_observed_config_with_declared_fields_overlaid() -> None:
    """An update keeps every observed field and overlays only what the config declares."""
    observed = broker_stream(
        max_age=30 * DAY,
        allow_msg_ttl=True,
        consumer_limits={"max_ack_pending": 100},
        sources=[{"name": "OTHER"}],
        metadata={"_nats.req.level": "0", "team": "x"},
    )
    resource = stream(max_age=90 * DAY, metadata=(("owner", "ops"),))
    send = updated(resource, observed)
    expected = dict(observed)
    expected["max_age"] = 90 * DAY
    expected["metadata"] = {"_nats.req.level": "0", "team": "x", "owner": "ops", **marker(resource)}
    assert send == expected


def test_update_kv_uses_wire_fields_and_keeps_client_choices() -> None:
    """A KV update sends max_msgs_per_subject for history and keeps the creating client's
    own choices (allow_direct, deny_delete, allow_msg_ttl)."""
    observed = js_kv(max_msgs_per_subject=1)
    resource = kv(history=5, ttl=HOUR)
    send = updated(resource, observed)
    metadata = {**observed["metadata"], **marker(resource)}
    assert send == {**observed, "max_msgs_per_subject": 5, "max_age": HOUR, "metadata": metadata}
    assert "history" not in send
    assert "ttl" not in send


def test_update_restores_bucket_rollups() -> None:
    """A bucket that lost allow_rollup_hdrs gets it back, even though the config never says so."""
    send = updated(kv(), nats_py_kv(allow_rollup_hdrs=False))
    assert send["allow_rollup_hdrs"] is True


def test_update_clamps_duplicate_window_when_max_age_drops() -> None:
    """Lowering max_age under the observed dedupe window also lowers the window (the broker
    refuses a window longer than max_age)."""
    send = updated(stream(max_age=MIN), broker_stream())
    assert send["max_age"] == MIN
    assert send["duplicate_window"] == MIN


def test_update_sends_wire_shapes() -> None:
    """Subjects go out as a list and placement as a JSON object."""
    send = updated(
        Resource(
            Kind.STREAM,
            "S1",
            {"subjects": ("s1.>", "t.>"), "placement": (("cluster", "c1"), ("tags", ()))},
        ),
        broker_stream(),
    )
    assert send["subjects"] == ["s1.>", "t.>"]
    assert send["placement"] == {"cluster": "c1"}


# --- plan() and how changes read ------------------------------------------------------


def test_plan_decides_every_resource_in_declaration_order() -> None:
    """plan() returns one decision per declared resource, in order, matched by stream name."""
    resources = [stream(max_age=DAY), kv(history=5), obj()]
    observed = {"S1": seen(broker_stream(max_age=DAY)), "KV_jobs": seen(nats_py_kv())}
    decisions = plan(resources, observed, NOW)
    assert [d.resource for d in decisions] == resources
    assert [d.action for d in decisions] == [Action.IN_SYNC, Action.IN_SYNC, Action.CREATE]


@pytest.mark.parametrize(
    ("change", "text"),
    [
        (Change("history", 1, 5), "history: 1 -> 5"),
        (Change("max_age", 30 * DAY, 90 * DAY), "max_age: 30d -> 90d"),
        (Change("ttl", 0, HOUR), "ttl: unlimited -> 1h"),
        (Change("max_bytes", -1, 512 * MIB), "max_bytes: unlimited -> 512MiB"),
        (Change("max_msgs", -1, 600), "max_msgs: unlimited -> 600"),
        (Change("discard", "old", "new"), "discard: 'old' -> 'new'"),
        (Change("deny_delete", True, False), "deny_delete: true -> false"),
        (Change("subjects", ("a.>",), ("a.>", "b")), "subjects: [a.>] -> [a.>, b]"),
        (
            Change("metadata", (), (("owner", "ops"),)),
            "metadata: {} -> {owner='ops'}",
        ),
    ],
    ids=lambda v: v.field if isinstance(v, Change) else None,
)
def test_change_reads_like_the_config(change: Change, text: str) -> None:
    """A change prints as the operator would write the values in the config."""
    assert str(change) == text


# --- what we create, we see as in sync ------------------------------------------------

# Defaults nats-server 2.15.1 fills in on create (from the STREAM.LIST answer above).
_SERVER_FILLS = {k: v for k, v in BROKER_STREAM.items() if k not in ("name", "subjects")}


def as_broker_stores(send: dict[str, Any]) -> dict[str, Any]:
    """The config nats-server 2.15.1 reports after a create with `send`, including the
    rewrites it was seen to make: a 0 limit becomes -1, a 0 dedupe window the default."""
    config = {**_SERVER_FILLS, **send}
    for field in ("max_msgs", "max_bytes", "max_msgs_per_subject", "max_msg_size"):
        if config[field] == 0:
            config[field] = -1
    if config["duplicate_window"] == 0:
        age = config["max_age"]
        config["duplicate_window"] = age if 0 < age < 2 * MIN else 2 * MIN
    config["metadata"] = {**send.get("metadata", {}), "_nats.req.level": "0"}
    return config


def test_repo_config_is_in_sync_after_create() -> None:
    """Every resource in config.toml, once created as planned, is then in sync: no
    perpetual update loop."""
    config = load(str(REPO_CONFIG))
    for resource in config.resources:
        send = created(resource)
        decision = decide(resource, Observed(config=as_broker_stores(send)), NOW)
        assert decision.action is Action.IN_SYNC, (resource.label, decision.changes)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_bytes", 0),
        ("max_msgs", 0),
        ("max_msgs_per_subject", 0),
        ("max_msg_size", 0),
        ("duplicate_window", 0),
    ],
)
def test_zero_limits_are_refused_by_config(key: str, value: int) -> None:
    """A 0 limit, which the broker would store as "unlimited" (or its 2m default
    window) and so read back as drift forever, is refused before any request."""
    with pytest.raises(ConfigError) as info:
        parse({"streams": {"S": {"subjects": ["s.>"], key: value}}}, "w.toml")
    assert f"streams.S.{key}:" in str(info.value)


# --- the words of data at stake follow the policy the update puts in force ------------


def test_stake_wording_when_update_switches_to_discard_old() -> None:
    """Lowering max_bytes while switching discard new->old is reported as discarding data."""
    decision = decide(
        stream(max_bytes=512 * MIB, discard="old"),
        seen(broker_stream(max_bytes=GIB, discard="new"), **stored(5000, 800 * MIB)),
        NOW,
    )
    assert decision.action is Action.UPDATE
    assert "would be discarded" in "\n".join(decision.at_stake)


def test_stake_wording_when_update_switches_to_discard_new() -> None:
    """Lowering max_bytes while switching discard old->new is reported as refusing writes."""
    decision = decide(
        stream(max_bytes=512 * MIB, discard="new"),
        seen(broker_stream(max_bytes=GIB, discard="old"), **stored(5000, 800 * MIB)),
        NOW,
    )
    assert "new writes would be refused" in "\n".join(decision.at_stake)


# --- several watchdogs: spec_version and the managed-by marker -------------------------


def _versioned(version: int, **declared: Any) -> Resource:
    return dataclasses.replace(stream(**declared), spec_version=version)


def _written_by(resource: Resource, **fields: Any) -> dict[str, Any]:
    """S1 as another watchdog (with `resource`'s spec) left it, `fields` changed."""
    written = {k: v for k, v in created(resource).items() if k != "name"}
    return broker_stream(**{**written, **fields})


def test_every_write_carries_the_marker() -> None:
    """Creates and updates stamp managed-by, spec_version and the spec hash."""
    mine = _versioned(3, max_age=DAY)
    assert created(mine)["metadata"] == marker(mine)
    send = updated(mine, broker_stream(max_age=HOUR))
    assert send["metadata"]["kanade.spec_version"] == "3"
    assert send["metadata"]["kanade.managed_by"] == "kanade-watchdog"


def test_newer_spec_on_the_broker_is_left_alone() -> None:
    """A resource written by a higher spec_version is not touched, whatever differs."""
    theirs = _versioned(2, max_age=DAY)
    mine = _versioned(1, max_age=HOUR)
    decision = decide(mine, Observed(config=_written_by(theirs)), NOW)
    assert decision.action is Action.NEWER_SPEC
    assert decision.send is None
    assert "newer spec present (spec_version 2 > 1)" in decision.reason


def test_older_spec_on_the_broker_is_updated() -> None:
    """A resource written by a lower spec_version is brought to this config."""
    theirs = _versioned(1, max_age=HOUR)
    mine = _versioned(2, max_age=DAY)
    decision = decide(mine, Observed(config=_written_by(theirs)), NOW)
    assert decision.action is Action.UPDATE
    assert decision.send is not None
    assert decision.send["metadata"]["kanade.spec_version"] == "2"


def test_same_spec_different_content_is_a_conflict_not_a_write() -> None:
    """Equal spec_versions with different declared content block instead of fighting."""
    theirs = _versioned(4, max_age=HOUR)
    mine = _versioned(4, max_age=DAY)
    decision = decide(mine, Observed(config=_written_by(theirs)), NOW)
    assert decision.action is Action.BLOCKED
    assert decision.conflict
    assert decision.send is None


def test_same_spec_same_content_drift_is_reverted() -> None:
    """Drift on a resource this very spec wrote is ordinary drift: updated."""
    mine = _versioned(4, max_age=DAY)
    decision = decide(mine, Observed(config=_written_by(mine, max_age=HOUR)), NOW)
    assert decision.action is Action.UPDATE
    assert not decision.conflict


def test_unmarked_resource_in_sync_is_adopted_without_a_write() -> None:
    """A resource without the marker (made by the backend or by hand) is adopted: in
    sync means no write, not even to add the marker."""
    decision = decide(_versioned(7, max_age=DAY), Observed(config=broker_stream(max_age=DAY)), NOW)
    assert decision.action is Action.IN_SYNC
