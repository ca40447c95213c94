"""Decisions converge: after a successful write, the same observation plans in
sync, so the watchdog never writes a resource in a loop.

The pure property lays a random valid declaration (streams, KV buckets, object
stores, through the real config parser) over a random foreign config as a
broker holds it, decides, stores what the decision sends the way nats-server
stores it, and decides again: zero writes. The broker property does the same
on a real nats-server (create the foreign stream, apply through `Broker`, read
it back with STREAM.INFO, plan again), and the command-line case replays
issue 10 item 4: a declared duplicate_window of 2h under a max_age of 1h set by
another client was rewritten thousands of times in a few seconds.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from kanade_watchdog.broker.api import Broker
from kanade_watchdog.config.load import parse
from kanade_watchdog.core.desired import (
    MANAGED_BY,
    MANAGED_BY_KEY,
    SPEC_HASH_KEY,
    SPEC_VERSION_KEY,
    WRITER_KEY,
)
from kanade_watchdog.core.plan import Action, Observed, decide
from kanade_watchdog.model.errors import ApiError, ConfigError
from kanade_watchdog.model.resources import Kind, Resource
from tests.helpers_streams import (
    new_audit,
    raw_update,
    requests_for,
    run_cli,
    stream_info,
    write_config,
)
from tests.natsserver import NatsServer

SEC = 1_000_000_000
MIN = 60 * SEC
HOUR = 60 * MIN
NOW = datetime(2025, 6, 1, 12, 0, 0)
LEAVES = ("a", "b", "c.>")

# What nats-server 2.15.1 reports for a stream created with a name and
# subjects only (STREAM.INFO), minus those two and the metadata.
SERVER_FILLS: dict[str, Any] = {
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
    "duplicate_window": 2 * MIN,
    "compression": "none",
    "allow_direct": False,
    "mirror_direct": False,
    "sealed": False,
    "deny_delete": False,
    "deny_purge": False,
    "allow_rollup_hdrs": False,
    "consumer_limits": {},
    "allow_msg_ttl": False,
}
SERVER_METADATA = {"_nats.req.level": "0", "_nats.ver": "2.15.1", "_nats.level": "1"}


def as_stored(send: Mapping[str, Any]) -> dict[str, Any]:
    """The config nats-server 2.15.1 reports after storing `send`: its defaults
    for what is absent, an empty placement dropped, its own metadata added."""
    config = {**SERVER_FILLS, **copy.deepcopy(dict(send))}
    if not config.get("placement"):
        config.pop("placement", None)
    config["metadata"] = {**(config.get("metadata") or {}), **SERVER_METADATA}
    return config


# --- declarations: raw TOML tables, validated by the real parser -------------------------

SIZES = st.sampled_from(["unlimited", 1024, "1GiB"])
COUNTS = st.sampled_from(["unlimited", 1, 1000])
AGES = st.sampled_from([0, "100ms", "30s", "1h", "90d"])
WINDOWS = st.sampled_from(["100ms", "1m", "2m", "2h"])
STORAGE = st.sampled_from(["file", "memory"])
COMPRESSION = st.sampled_from(["none", "s2"])
DESCRIPTIONS = st.sampled_from(["", "orders", "ünïcode ✓"])
PLACEMENTS = st.sampled_from(
    [{}, {"cluster": "c1"}, {"tags": ["b", "a"]}, {"cluster": "c1", "tags": ["x"]}]
)


def _fields(kind: Kind, single_server: bool) -> dict[str, st.SearchStrategy[Any]]:
    replicas = st.just(1) if single_server else st.sampled_from([1, 3])
    common: dict[str, st.SearchStrategy[Any]] = {
        "storage": STORAGE,
        "max_bytes": SIZES,
        "compression": COMPRESSION,
        "description": DESCRIPTIONS,
    }
    if not single_server:  # one server has no cluster or tags to place on
        common["placement"] = PLACEMENTS
    if kind is Kind.STREAM:
        return {
            **common,
            "retention": st.sampled_from(["limits", "interest", "workqueue"]),
            "max_age": AGES,
            "max_msgs": COUNTS,
            "max_msgs_per_subject": COUNTS,
            "max_msg_size": st.sampled_from(["unlimited", 1024]),
            "discard": st.sampled_from(["old", "new"]),
            "num_replicas": replicas,
            "duplicate_window": WINDOWS,
            "allow_direct": st.booleans(),
            "deny_delete": st.booleans(),
            "deny_purge": st.booleans(),
            "allow_rollup_hdrs": st.booleans(),
            "metadata": st.sampled_from([{}, {"owner": "ops"}, {"owner": "ops", "team": "x"}]),
        }
    extra: dict[str, st.SearchStrategy[Any]] = {"ttl": AGES, "replicas": replicas}
    if kind is Kind.KV:
        extra["history"] = st.sampled_from([1, 5, 64])
        extra["max_value_size"] = st.sampled_from(["unlimited", 1024])
    return {**common, **extra}


@dataclass(frozen=True)
class Declared:
    kind: Kind
    table: dict[str, Any]
    spec_version: int
    writer: str

    def resource(self, name: str) -> Resource:
        """The resource the real parser makes of this table under `name`."""
        table = dict(self.table)
        if self.kind is Kind.STREAM:
            table["subjects"] = [f"{name.lower()}.{leaf}" for leaf in table["subjects"]]
        section = {Kind.STREAM: "streams", Kind.KV: "kv_buckets"}.get(self.kind, "object_stores")
        document = {
            "spec_version": self.spec_version,
            "watchdog": {"id": self.writer},
            section: {name: table},
        }
        return parse(document, "converge.toml").resources[0]


@st.composite
def declarations(draw: st.DrawFn, *, single_server: bool = False) -> Declared:
    kind = draw(st.sampled_from(list(Kind)))
    table: dict[str, Any] = {}
    if kind is Kind.STREAM:
        table["subjects"] = sorted(draw(st.sets(st.sampled_from(LEAVES), min_size=1)))
    for key, values in _fields(kind, single_server).items():
        if draw(st.booleans()):
            table[key] = draw(values)
    table["protect"] = draw(st.booleans())
    declared = Declared(kind, table, draw(st.integers(1, 3)), draw(st.sampled_from(["w1", "w2"])))
    try:
        declared.resource("X1")
    except ConfigError:  # e.g. a window longer than the declared max_age
        assume(False)
    return declared


# --- foreign configs: what another client left on the broker ------------------------------


@dataclass(frozen=True)
class Foreign:
    fields: dict[str, Any]
    subjects: tuple[str, ...]  # stream leaves; buckets keep their own subjects
    marker: tuple[int, str, str | None] | None  # (spec_version, hash, writer)
    extra_metadata: dict[str, str]

    def config(self, resource: Resource) -> dict[str, Any]:
        """A broker-valid config holding `resource`'s name."""
        prefix = resource.name.lower()
        if resource.kind is Kind.STREAM:
            base: dict[str, Any] = {"subjects": [f"{prefix}.{leaf}" for leaf in self.subjects]}
        elif resource.kind is Kind.KV:
            base = {
                "subjects": [f"$KV.{resource.name}.>"],
                "discard": "new",
                "max_msgs_per_subject": 5,
                "allow_rollup_hdrs": True,
                "deny_delete": True,
            }
        else:
            base = {
                "subjects": [f"$O.{resource.name}.C.>", f"$O.{resource.name}.M.>"],
                "discard": "new",
                "allow_rollup_hdrs": True,
                "allow_direct": True,
            }
        config = {**SERVER_FILLS, "name": resource.stream, **base, **self.fields}
        age = config["max_age"]
        if age and config["duplicate_window"] > age:
            config["duplicate_window"] = age
        metadata = {**SERVER_METADATA, **self.extra_metadata}
        if self.marker is not None:
            version, digest, writer = self.marker
            metadata.update(
                {MANAGED_BY_KEY: MANAGED_BY, SPEC_VERSION_KEY: str(version), SPEC_HASH_KEY: digest}
            )
            if writer is not None:
                metadata[WRITER_KEY] = writer
        config["metadata"] = metadata
        return config


@st.composite
def foreigns(draw: st.DrawFn, *, single_server: bool = False) -> Foreign:
    choices: dict[str, st.SearchStrategy[Any]] = {
        "max_age": st.sampled_from([0, SEC, 30 * SEC, HOUR]),
        "duplicate_window": st.sampled_from([SEC, MIN, 2 * MIN, 2 * HOUR]),
        "max_bytes": st.sampled_from([-1, 4096, 1 << 30]),
        "max_msgs": st.sampled_from([-1, 10]),
        "max_msgs_per_subject": st.sampled_from([-1, 1, 10]),
        "max_msg_size": st.sampled_from([-1, 2048]),
        "discard": st.sampled_from(["old", "new"]),
        "retention": st.sampled_from(["limits", "interest"]),
        "storage": STORAGE,
        "compression": COMPRESSION,
        "description": st.sampled_from(["", "theirs"]),
        "allow_direct": st.booleans(),
        "deny_delete": st.booleans(),
        "allow_rollup_hdrs": st.booleans(),
    }
    if not single_server:
        choices["num_replicas"] = st.sampled_from([1, 3])
        choices["placement"] = st.sampled_from([{"cluster": "c1"}, {"tags": ["a", "b"]}])
    fields = {k: draw(v) for k, v in choices.items() if draw(st.booleans())}
    subjects = tuple(sorted(draw(st.sets(st.sampled_from(LEAVES), min_size=1))))
    marker = draw(
        st.none()
        | st.tuples(
            st.integers(1, 3),
            st.sampled_from(["0123456789abcdef", "fedcba9876543210"]),
            st.sampled_from([None, "w1", "w2"]),
        )
    )
    extra = draw(st.sampled_from([{}, {"team": "theirs"}, {"owner": "someone"}]))
    return Foreign(fields, subjects, marker, extra)


def present_mostly(*, single_server: bool = False) -> st.SearchStrategy[Foreign | None]:
    """A foreign config three times in four, else nothing (a create)."""
    return st.sampled_from([True, True, True, False]).flatmap(
        lambda present: foreigns(single_server=single_server) if present else st.none()
    )


# --- the pure property --------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(declared=declarations(), foreign=present_mostly(), messages=st.sampled_from([0, 50]))
def test_after_a_write_the_same_observation_is_in_sync(
    declared: Declared, foreign: Foreign | None, messages: int
) -> None:
    """Whatever the declaration and whatever another client left, once what the
    decision sends is stored, deciding again writes nothing."""
    resource = declared.resource("X1")
    state = {"messages": messages, "bytes": messages * 100}
    observed = None if foreign is None else Observed(config=foreign.config(resource), state=state)
    first = decide(resource, observed, NOW)
    event(str(first.action))
    if not first.writes:
        return
    assert first.send is not None
    second = decide(resource, Observed(config=as_stored(first.send), state=state), NOW)
    assert second.action is Action.IN_SYNC, (first.changes, second.changes, second.reason)
    assert second.changes == ()


def test_duplicate_window_under_a_foreign_max_age_is_compared_as_sent() -> None:
    """Issue 10 item 4: duplicate_window 2h declared, max_age 1h set by another
    client. The value sent is clamped to 1h, so 1h on the broker is in sync (with a
    warning saying why), and 2m there is updated to 1h, not to 2h."""
    resource = Declared(Kind.STREAM, {"subjects": ["a"], "duplicate_window": "2h"}, 1, "w1")
    res = resource.resource("X1")
    held = as_stored(
        {"name": "X1", "subjects": ["x1.a"], "max_age": HOUR, "duplicate_window": HOUR}
    )
    decision = decide(res, Observed(config=held), NOW)
    assert decision.action is Action.IN_SYNC
    assert any("duplicate_window 2h is sent as 1h" in w for w in decision.warnings)

    drifted = {**held, "duplicate_window": 2 * MIN}
    decision = decide(res, Observed(config=drifted), NOW)
    assert decision.action is Action.UPDATE
    assert [str(c) for c in decision.changes] == ["duplicate_window: 2m -> 1h"]


# --- on a real broker -------------------------------------------------------------------------

_serial = itertools.count()


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    srv = NatsServer(tmp_path_factory.mktemp("converge")).start()
    yield srv.url
    srv.stop()


async def _converges(url: str, declared: Declared, foreign: Foreign | None) -> None:
    n = next(_serial)
    name = {Kind.STREAM: f"C{n}", Kind.KV: f"b{n}", Kind.OBJECT_STORE: f"o{n}"}[declared.kind]
    resource = declared.resource(name)
    nc = await nats.connect(url)
    try:
        broker = Broker(nc, timeout=5.0)
        if foreign is not None:
            try:
                await broker.create(foreign.config(resource))
            except ApiError as exc:
                event(f"foreign config refused ({exc.err_code})")
                return
        now = datetime.now(UTC).replace(tzinfo=None)
        observed = await broker.stream_info(resource.stream)
        first = decide(resource, observed, now)
        event(str(first.action))
        if not first.writes:
            return
        assert first.send is not None
        try:
            if first.action is Action.CREATE:
                await broker.create(first.send)
            else:
                await broker.update(first.send)
        except ApiError as exc:
            event(f"write refused ({exc.err_code})")
            return
        again = await broker.stream_info(resource.stream)
        second = decide(resource, again, now)
        assert second.action is Action.IN_SYNC, (first.changes, second.changes, second.reason)
    finally:
        await nc.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@example(  # issue 10 item 4: the window is clamped to a max_age only the broker holds
    declared=Declared(Kind.STREAM, {"subjects": ["a"], "duplicate_window": "2h"}, 1, "w1"),
    foreign=Foreign({"max_age": HOUR, "duplicate_window": 2 * MIN}, ("a",), None, {}),
)
@given(declared=declarations(single_server=True), foreign=present_mostly(single_server=True))
def test_on_a_real_broker_a_write_is_followed_by_in_sync(
    broker_url: str, declared: Declared, foreign: Foreign | None
) -> None:
    """Apply a random declaration over a random foreign stream on a real broker,
    read it back with STREAM.INFO: the same plan is then in sync."""
    asyncio.run(_converges(broker_url, declared, foreign))


async def test_clamped_window_is_written_once_then_left_alone(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """Issue 10 item 4 through the command line: after another client sets
    max_age 1h under a declared duplicate_window of 2h, apply and plan find the
    stream in sync and send no update, however often they run."""
    body = '[streams.DEDUP]\nsubjects = ["dedup.>"]\nduplicate_window = "2h"\n'
    config = write_config(tmp_path, server.url, body)
    assert (await run_cli("apply", config=config)).code == 0
    assert (await stream_info(client, "DEDUP"))["config"]["duplicate_window"] == 2 * HOUR
    await raw_update(client, "DEDUP", max_age=HOUR, duplicate_window=HOUR)

    audit = await new_audit(client)
    for _ in range(3):
        run = await run_cli("apply", "--json", config=config)
        assert run.code == 0, run.stdout
        assert run.resources()["DEDUP"]["result"] == "in_sync"
    plan = await run_cli("plan", config=config)
    await audit.settle()
    await audit.stop()
    assert plan.code == 0, plan.stdout
    assert audit.writes == 0, audit.verbs
    assert not any("UPDATE" in s for s in requests_for(audit, "DEDUP"))
    info = await stream_info(client, "DEDUP")
    assert info["config"]["duplicate_window"] == HOUR
