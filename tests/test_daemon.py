"""`kanade-watchdog run` as a subprocess against real nats-server processes.

Each test starts its own broker and daemon (`daemonproc.DaemonProc`), acts as
a second client (deletes, drifts, fake advisories, broker kills and
restarts, signals) and observes three things the daemon cannot fake: the
broker's own state (raw `$JS.API.STREAM.INFO`), the broker's API audit of
the daemon's connection (`audit.ApiAudit`), and the daemon's JSON log lines.
Every test ends with the audit proving the daemon never deleted or purged.
Timers are test-sized: a resync of 1h unless the resync path is under test.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from tests.audit import ApiAudit
from tests.chaos.proxy import StallProxy
from tests.daemonproc import (
    WATCHDOG_NAME,
    DaemonProc,
    TcpProxy,
    daemon_config,
    eventually,
    has_message,
    is_action,
    is_pass,
)
from tests.helpers_streams import (
    ALL_STREAMS,
    EXPECTED_KV,
    EXPECTED_OBJ,
    EXPECTED_STREAMS,
    GIB,
    MIB,
    NS_PER_DAY,
    stream_info,
    stream_names,
)
from tests.natsserver import NatsServer, free_port

Spawn = Callable[[Path], DaemonProc]

ADVISORY = "io.nats.jetstream.advisory.v1.stream_action"


# --- fixtures -------------------------------------------------------------------------


async def _quiet(_exc: Exception) -> None:
    """The test client's error callback: a broker restart is expected here."""


async def connect(url: str) -> Client:
    """A second client that rides out broker restarts quickly."""
    return await nats.connect(
        url,
        name="test-client",
        reconnect_time_wait=0.05,
        max_reconnect_attempts=-1,
        error_cb=_quiet,
    )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[NatsServer]:
    srv = NatsServer(tmp_path).start()
    yield srv
    srv.stop()


@pytest.fixture
async def nc(broker: NatsServer) -> AsyncIterator[Client]:
    client = await connect(broker.url)
    yield client
    await client.close()


@pytest.fixture
async def audit(nc: Client) -> AsyncIterator[ApiAudit]:
    """The daemon's API calls for the whole test; fails it on any delete or purge."""
    seen = await ApiAudit(nc, client_name=WATCHDOG_NAME).start()
    yield seen
    await seen.settle(0.05)
    await seen.stop()
    assert seen.destructive == 0, seen.verbs


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start daemons; at teardown they are killed, and none may have printed
    anything but JSON log lines (a traceback on stderr is a bug)."""
    procs: list[DaemonProc] = []

    def start(config: Path) -> DaemonProc:
        proc = DaemonProc(config).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.close()
    for proc in procs:
        assert proc.raw == [], "\n".join(proc.raw)


@pytest.fixture
def repo_config(broker: NatsServer, tmp_path: Path) -> Path:
    """The repo's 25 resources; resync 1h, so only advisories heal quickly."""
    return daemon_config(tmp_path / "watchdog.toml", broker.url)


async def ready(spawn: Spawn, config: Path) -> DaemonProc:
    """A daemon that has converged (it logged `ready`)."""
    proc = spawn(config)
    await proc.wait_for(is_action("ready"), within=15)
    return proc


# --- file edits (plain functions: the event loop is not meant to block on I/O) ----------


def edit(path: Path, old: str, new: str) -> None:
    """Replace `old` (which must be there) by `new` in a config file."""
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def append(path: Path, text: str) -> None:
    with path.open("a") as fh:
        fh.write(text)


def read(path: Path) -> str:
    return path.read_text()


def write(path: Path, text: str) -> None:
    path.write_text(text)


# --- broker helpers ----------------------------------------------------------------------


async def info_or_none(nc: Client, name: str) -> dict[str, Any] | None:
    """STREAM.INFO as the broker answers it, or None when the stream is missing."""
    msg = await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=2)
    doc = json.loads(msg.data)
    assert isinstance(doc, dict)
    if "error" in doc:
        assert doc["error"]["err_code"] == 10059, doc  # only "not found" is expected
        return None
    return doc


async def present(nc: Client, name: str) -> bool:
    return await info_or_none(nc, name) is not None


async def raw_drift(nc: Client, name: str, **changes: Any) -> None:
    """Another operator's update: the full config from STREAM.INFO, one field changed."""
    config = dict((await stream_info(nc, name))["config"])
    config.update(changes)
    msg = await nc.request(f"$JS.API.STREAM.UPDATE.{name}", json.dumps(config).encode(), timeout=2)
    assert "error" not in json.loads(msg.data), msg.data


async def created_stamps(nc: Client) -> dict[str, str]:
    """stream -> its `created` time: a re-created stream gets a new one."""
    return {name: (await stream_info(nc, name))["created"] for name in sorted(ALL_STREAMS)}


def advisory(stream: str, action: str = "modify") -> bytes:
    return json.dumps({"type": ADVISORY, "stream": stream, "action": action}).encode()


def subjects_for(audit: ApiAudit, verb: str, stream: str) -> list[str]:
    """The audited request subjects `$JS.API.STREAM.<verb>.<stream>`."""
    return [s for s in audit.subjects if s == f"$JS.API.STREAM.{verb}.{stream}"]


async def assert_declared(nc: Client, stream: str) -> None:
    """The broker holds `stream` with the values config.toml declares for it."""
    cfg = (await stream_info(nc, stream))["config"]
    if stream in EXPECTED_STREAMS:
        subjects, max_age, max_bytes, discard, per_subject = EXPECTED_STREAMS[stream]
        assert cfg["subjects"] == subjects
        assert (cfg["max_age"], cfg["max_bytes"], cfg["discard"]) == (
            max_age,
            max_bytes,
            discard,
        )
        assert cfg.get("max_msgs_per_subject", -1) == per_subject
    elif stream.startswith("KV_"):
        bucket = stream[3:]
        assert cfg["subjects"] == [f"$KV.{bucket}.>"]
        assert cfg["max_msgs_per_subject"] == EXPECTED_KV[bucket]
        assert (cfg["discard"], cfg["allow_rollup_hdrs"], cfg["deny_delete"]) == (
            "new",
            True,
            True,
        )
    else:
        bucket = stream[4:]
        assert sorted(cfg["subjects"]) == [f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"]
        assert (cfg["max_bytes"], cfg["max_age"]) == EXPECTED_OBJ[bucket]
        assert (cfg["discard"], cfg["allow_rollup_hdrs"]) == ("new", True)


async def delete_as_client(nc: Client, kind: str, name: str) -> None:
    """Delete a resource the way the backend's own client would."""
    js = nc.jetstream()
    if kind == "stream":
        assert await js.delete_stream(name)
    elif kind == "kv":
        assert await js.delete_key_value(name)
    else:
        assert await js.delete_object_store(name)


@dataclass(frozen=True)
class Target:
    """One declared resource as a test names it: kind, name, backing stream."""

    kind: str
    name: str
    stream: str


TARGETS = (
    Target("stream", "RESULTS", "RESULTS"),
    Target("kv", "script_current", "KV_script_current"),
    Target("object_store", "result_output", "OBJ_result_output"),
)


# --- 1. healing a delete: the advisory path ---------------------------------------------


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.kind)
async def test_deleted_resource_is_recreated_by_the_advisory(
    spawn: Spawn, repo_config: Path, nc: Client, audit: ApiAudit, target: Target
) -> None:
    """A resource deleted by a second client is back within a second with its
    declared config, logged as created by the advisory (resync is 1h away)."""
    kind, name, stream = target.kind, target.name, target.stream
    proc = await ready(spawn, repo_config)
    mark = proc.mark()
    await delete_as_client(nc, kind, name)
    started = time.monotonic()
    [line] = await proc.wait_for(is_action("created", stream=stream), after=mark, within=5)
    await eventually(lambda: present(nc, stream), within=2, what=f"{stream} back")
    assert time.monotonic() - started < 1.0
    assert line["trigger"] == "advisory"
    assert (line["resource"], line["kind"]) == (name, kind)
    await assert_declared(nc, stream)

    js = nc.jetstream()
    if kind == "kv":
        kv = await js.key_value(name)
        await kv.put("cmd-1", b"v1")
        assert (await kv.get("cmd-1")).value == b"v1"
    elif kind == "object_store":
        obj = await js.object_store(name)
        await obj.put("job.out", b"o" * 100_000)
        assert (await obj.get("job.out")).data == b"o" * 100_000
    await audit.settle(0.1)
    assert len(subjects_for(audit, "CREATE", stream)) == 2  # startup + the one heal


# --- 2. healing a delete: the resync path ------------------------------------------------


async def test_with_advisories_off_the_resync_heals_every_kind(
    spawn: Spawn, broker: NatsServer, nc: Client, audit: ApiAudit, tmp_path: Path
) -> None:
    """With advisories = false, a deleted stream, KV bucket and object store are
    re-created by the next resync (300ms), each logged with trigger resync."""
    config = daemon_config(
        tmp_path / "w.toml",
        broker.url,
        watchdog={"advisories": False, "resync_interval": "300ms"},
    )
    proc = await ready(spawn, config)
    await proc.quiet()  # past the second look the daemon takes after its creates
    mark = proc.mark()
    for target in TARGETS:
        await delete_as_client(nc, target.kind, target.name)
    lines = await proc.wait_for(is_action("created"), after=mark, n=3, within=5)
    assert {line["stream"] for line in lines} == {t.stream for t in TARGETS}
    assert {line["trigger"] for line in lines} == {"resync"}
    for target in TARGETS:
        await assert_declared(nc, target.stream)
    assert proc.count(lambda line: line.get("trigger") == "advisory") == 0


# --- 3. + 12. drift reverted, data kept, no update loop -------------------------------------


@dataclass(frozen=True)
class Drift:
    """Another client's change to one field, and what the revert must look like."""

    stream: str
    subject: str  # where test messages go, to prove they survive the revert
    change: dict[str, Any]
    diff: str  # the daemon's diff text, in the config's own words
    field: str
    restored: Any


DRIFTS = (
    Drift("RESULTS", "results.pc1", {"max_age": 1 * NS_PER_DAY}, "max_age: 1d -> 30d",
          "max_age", 30 * NS_PER_DAY),
    Drift("KV_script_current", "$KV.script_current.cmd-1", {"max_msgs_per_subject": 10},
          "history: 10 -> 5", "max_msgs_per_subject", 5),
    Drift("OBJ_result_output", "$O.result_output.C.chunk1", {"max_bytes": 512 * MIB},
          "max_bytes: 512MiB -> 1GiB", "max_bytes", 1 * GIB),
    Drift("KV_jobs", "$KV.jobs.nightly", {"allow_rollup_hdrs": False},
          "allow_rollup_hdrs: false -> true", "allow_rollup_hdrs", True),
)  # fmt: skip


@pytest.mark.parametrize("drift", DRIFTS, ids=lambda d: f"{d.stream}-{d.field}")
async def test_drift_is_reverted_once_keeping_stored_data(
    spawn: Spawn, repo_config: Path, nc: Client, audit: ApiAudit, drift: Drift
) -> None:
    """A field changed behind the daemon's back is set back by one update whose
    log line carries the diff; stored messages stay; the UPDATED advisory the
    revert itself causes ends in a read, so no second update follows."""
    stream = drift.stream
    proc = await ready(spawn, repo_config)
    js = nc.jetstream()
    for i in range(4):
        await js.publish(drift.subject, f"payload {i}".encode())
    before = (await stream_info(nc, stream))["state"]
    assert before["messages"] == 4

    mark = proc.mark()
    await raw_drift(nc, stream, **drift.change)
    [line] = await proc.wait_for(
        lambda entry: is_action("updated", stream=stream)(entry) and "diff" in entry,
        after=mark,
        within=5,
    )
    assert line["diff"] == drift.diff
    assert line["trigger"] == "advisory"
    await eventually(
        lambda: _field_is(nc, stream, drift.field, drift.restored),
        within=2,
        what=f"{stream}.{drift.field} restored",
    )
    after = (await stream_info(nc, stream))["state"]
    assert (after["messages"], after["first_seq"]) == (before["messages"], before["first_seq"])

    await asyncio.sleep(1.0)  # long enough for a loop to show itself many times
    await audit.settle(0.05)
    assert len(subjects_for(audit, "UPDATE", stream)) == 1, audit.subjects
    assert audit.count("STREAM.UPDATE") == 1
    assert proc.count(lambda e: "diff" in e and e.get("action") == "updated", after=mark) == 1


async def _field_is(nc: Client, stream: str, field: str, value: object) -> bool:
    info = await info_or_none(nc, stream)
    return info is not None and info["config"].get(field) == value


async def test_undeclared_field_changed_by_another_client_is_left_alone(
    spawn: Spawn, repo_config: Path, nc: Client, audit: ApiAudit
) -> None:
    """A field the config does not declare (description, max_msgs on RESULTS)
    set by another client is not drift: the advisory ends in a read, no write."""
    proc = await ready(spawn, repo_config)
    await proc.quiet()  # past the second look the daemon takes after its creates
    await audit.settle(0.1)
    writes_before = audit.writes
    infos_before = len(subjects_for(audit, "INFO", "RESULTS"))
    mark = proc.mark()
    await raw_drift(nc, "RESULTS", description="set by the backend", max_msgs=1_000_000)
    await eventually(
        _async(lambda: len(subjects_for(audit, "INFO", "RESULTS")) > infos_before),
        within=5,
        what="the daemon read RESULTS after the advisory",
    )
    await asyncio.sleep(0.3)
    await audit.settle(0.05)
    assert audit.writes == writes_before, audit.subjects
    cfg = (await stream_info(nc, "RESULTS"))["config"]
    assert (cfg["description"], cfg["max_msgs"]) == ("set by the backend", 1_000_000)
    assert proc.count(is_action("updated"), after=mark) == 0


def _async(check: Callable[[], bool]) -> Callable[[], Any]:
    async def run() -> bool:
        return check()

    return run


# --- 4. + 5. broker crash and restart -------------------------------------------------------


async def test_broker_kill_9_and_restart_resyncs_without_writes(
    spawn: Spawn, broker: NatsServer, repo_config: Path, nc: Client, audit: ApiAudit
) -> None:
    """After kill -9 and a restart on the same store the daemon logs broker_lost,
    then broker_back, runs one full pass with trigger reconnect that writes
    nothing, and its connection still heals a later delete."""
    proc = await ready(spawn, repo_config)
    stamps = await created_stamps(nc)
    await proc.quiet()  # no pass in flight when the broker dies
    mark = proc.mark()
    broker.kill()
    await proc.wait_for(is_action("broker_lost"), after=mark, within=5)
    lost = proc.mark()
    broker.start()
    await proc.wait_for(is_action("broker_back"), after=lost, within=5)
    [pass_line] = await proc.wait_for(is_pass("reconnect"), after=lost, within=5)
    assert (pass_line["scope"], pass_line["looked"], pass_line["in_sync"]) == ("full", 25, 25)
    assert proc.count(is_action("created"), after=mark) == 0
    assert proc.count(is_action("updated"), after=mark) == 0
    await eventually(lambda: _connected(nc), within=5, what="test client reconnected")
    assert await created_stamps(nc) == stamps  # nothing was re-created

    heal = proc.mark()
    await nc.jetstream().delete_stream("EVENTS")
    [line] = await proc.wait_for(is_action("created", stream="EVENTS"), after=heal, within=5)
    assert line["trigger"] == "advisory"
    assert proc.alive


async def _connected(nc: Client) -> bool:
    return nc.is_connected


async def test_memory_stream_lost_in_a_broker_restart_is_recreated_on_reconnect(
    spawn: Spawn, broker: NatsServer, nc: Client, audit: ApiAudit, tmp_path: Path
) -> None:
    """A memory stream vanishes with a kill -9 (and no advisory says so): the
    reconnect pass re-creates it, trigger reconnect; the file stream is kept."""
    resources = (
        '[streams.VOLATILE]\nsubjects = ["volatile.>"]\nstorage = "memory"\n\n'
        '[streams.DURABLE]\nsubjects = ["durable.>"]\nmax_age = "1d"\n'
    )
    config = daemon_config(tmp_path / "w.toml", broker.url, resources=resources)
    proc = await ready(spawn, config)
    await proc.quiet()
    mark = proc.mark()
    broker.kill()
    broker.start()
    [line] = await proc.wait_for(is_action("created", stream="VOLATILE"), after=mark, within=8)
    assert line["trigger"] == "reconnect"
    assert proc.count(is_action("created", stream="DURABLE"), after=mark) == 0
    await eventually(lambda: _connected(nc), within=5, what="test client reconnected")
    assert (await stream_info(nc, "VOLATILE"))["config"]["storage"] == "memory"


async def test_reconnect_pass_looks_at_resources_whose_requests_died_with_the_connection(
    spawn: Spawn, broker: NatsServer, nc: Client, audit: ApiAudit, tmp_path: Path
) -> None:
    """When a stalled connection (requests unanswered) is dropped and rebuilt,
    the reconnect pass re-reads all 25 resources and re-creates one deleted
    during the stall at once, with trigger reconnect."""
    proxy = await TcpProxy(broker.port).start()
    try:
        config = daemon_config(
            tmp_path / "w.toml",
            proxy.url,
            watchdog={"backoff_initial": "3s", "backoff_max": "3s"},
        )
        proc = await ready(spawn, config)
        await proc.quiet()
        mark = proc.mark()
        proxy.hold()  # the daemon's requests now vanish; advisories still reach it
        await nc.jetstream().delete_stream("EVENTS")
        await nc.publish("$JS.EVENT.ADVISORY.STREAM.UPDATED.RESULTS", advisory("RESULTS"))
        await nc.flush()
        for label in ("EVENTS", "RESULTS"):  # each request timed out (transient)
            await proc.wait_for(failed_attempt(label), after=mark, within=5)

        cut = proc.mark()
        await proxy.cut()
        [back] = await proc.wait_for(is_action("broker_back"), after=cut, within=5)
        [line] = await proc.wait_for(is_pass("reconnect"), after=cut, within=5)
        assert (line["scope"], line["looked"]) == ("full", 25), line
        [created] = await proc.wait_for(is_action("created", stream="EVENTS"), after=cut, within=5)
        assert created["trigger"] == "reconnect"
        assert created["ts"] - back["ts"] < 1.0
    finally:
        await proxy.close()


async def test_restart_on_a_wiped_store_recreates_all_25(
    spawn: Spawn, broker: NatsServer, repo_config: Path, nc: Client, audit: ApiAudit
) -> None:
    """A broker that comes back with an empty store gets all 25 resources again,
    each logged once as created with trigger reconnect."""
    proc = await ready(spawn, repo_config)
    await proc.quiet()  # no pass in flight when the broker dies
    mark = proc.mark()
    broker.kill()
    broker.wipe_store()
    broker.start()
    lines = await proc.wait_for(is_action("created"), after=mark, n=25, within=10)
    assert {line["stream"] for line in lines} == ALL_STREAMS
    assert {line["trigger"] for line in lines} == {"reconnect"}
    await eventually(lambda: _connected(nc), within=5, what="test client reconnected")
    assert await stream_names(nc) == ALL_STREAMS
    for stream in ("RESULTS", "KV_jobs", "OBJ_collections"):
        await assert_declared(nc, stream)
    await asyncio.sleep(0.2)
    assert proc.count(is_action("created"), after=mark) == 25


# --- 6. broker down at start ---------------------------------------------------------------


async def test_broker_down_at_start_converges_once_it_comes_up(
    spawn: Spawn, tmp_path: Path
) -> None:
    """Started before its broker, the daemon stays up and says it is waiting;
    when the broker appears 1.5 s later it creates all 25 (trigger startup)."""
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    proc = spawn(daemon_config(tmp_path / "w.toml", url))
    await proc.wait_for(is_action("waiting"), within=5)
    await asyncio.sleep(1.5)
    assert proc.alive
    assert proc.count(is_action("created")) == 0
    assert proc.count(lambda line: line.get("level") in ("error", "critical")) == 0

    srv = NatsServer(tmp_path, port=port).start()
    try:
        client = await connect(url)
        try:
            seen = await ApiAudit(client, client_name=WATCHDOG_NAME).start()
            lines = await proc.wait_for(is_action("created"), n=25, within=10)
            assert {line["trigger"] for line in lines} == {"startup"}
            await proc.wait_for(is_action("ready"), within=5)
            assert await stream_names(client) == ALL_STREAMS
            await seen.settle(0.05)
            assert seen.destructive == 0
        finally:
            await client.close()
    finally:
        srv.stop()


# --- 7. + 8. reload ----------------------------------------------------------------------------


async def test_sighup_with_an_added_resource_creates_it(
    spawn: Spawn, repo_config: Path, nc: Client, audit: ApiAudit
) -> None:
    """After the file gains a stream and the daemon gets SIGHUP, it logs the
    reload with 26 resources and creates the new stream with trigger reload."""
    proc = await ready(spawn, repo_config)
    mark = proc.mark()
    append(repo_config, '\n[streams.BACKUPS]\nsubjects = ["backups.>"]\nmax_age = "14d"\n')
    proc.send(signal.SIGHUP)
    [reloaded] = await proc.wait_for(is_action("reloaded"), after=mark, within=5)
    assert "26 resources" in reloaded["message"]
    [line] = await proc.wait_for(is_action("created", stream="BACKUPS"), after=mark, within=5)
    assert line["trigger"] == "reload"
    cfg = (await stream_info(nc, "BACKUPS"))["config"]
    assert (cfg["subjects"], cfg["max_age"]) == (["backups.>"], 14 * NS_PER_DAY)
    assert proc.count(is_action("created"), after=mark) == 1


async def test_sighup_with_a_changed_field_and_a_new_spec_version_updates_it(
    spawn: Spawn, broker: NatsServer, nc: Client, audit: ApiAudit, tmp_path: Path
) -> None:
    """A declared value edited in the file (RESULTS max_age 30d -> 60d) with
    spec_version raised is applied on SIGHUP as one update, trigger reload."""
    path = daemon_config(tmp_path / "w.toml", broker.url, spec_version=1)
    proc = await ready(spawn, path)
    mark = proc.mark()
    edit(
        path,
        'subjects = ["results.>"]\nmax_age = "30d"',
        'subjects = ["results.>"]\nmax_age = "60d"',
    )
    edit(path, "spec_version = 1", "spec_version = 2")
    proc.send(signal.SIGHUP)
    [line] = await proc.wait_for(is_action("updated", stream="RESULTS"), after=mark, within=5)
    assert (line["trigger"], line["diff"]) == ("reload", "max_age: 30d -> 60d")
    assert (await stream_info(nc, "RESULTS"))["config"]["max_age"] == 60 * NS_PER_DAY
    await proc.quiet()
    await audit.settle(0.05)
    assert len(subjects_for(audit, "UPDATE", "RESULTS")) == 1


async def test_sighup_with_a_changed_field_but_the_same_spec_version_is_explained(
    spawn: Spawn, repo_config: Path, nc: Client, audit: ApiAudit
) -> None:
    """An edited value reloaded without raising spec_version (only this watchdog
    ever wrote the stream) is either applied, or refused with a message that
    does not blame another watchdog."""
    proc = await ready(spawn, repo_config)
    mark = proc.mark()
    edit(
        repo_config,
        'subjects = ["results.>"]\nmax_age = "30d"',
        'subjects = ["results.>"]\nmax_age = "60d"',
    )
    proc.send(signal.SIGHUP)
    await proc.wait_for(is_pass("reload"), after=mark, within=5)
    await proc.quiet()
    applied = (await stream_info(nc, "RESULTS"))["config"]["max_age"] == 60 * NS_PER_DAY
    blamed = proc.find(has_message("another watchdog"), after=mark)
    assert applied or not blamed, blamed


async def test_sighup_dropping_a_resource_neither_deletes_nor_heals_it(
    spawn: Spawn, repo_config: Path, nc: Client, audit: ApiAudit
) -> None:
    """A stream removed from the file is left on the broker at reload, and once
    undeclared a delete of it by someone else is not undone."""
    proc = await ready(spawn, repo_config)
    mark = proc.mark()
    text = read(repo_config)
    edit(repo_config, text[text.index("[streams.AUDIT]") : text.index("[streams.OBS_EVENTS]")], "")
    proc.send(signal.SIGHUP)
    [reloaded] = await proc.wait_for(is_action("reloaded"), after=mark, within=5)
    assert "24 resources" in reloaded["message"]
    await proc.wait_for(is_pass("reload"), after=mark, within=5)
    assert await present(nc, "AUDIT")

    await nc.jetstream().delete_stream("AUDIT")
    await nc.jetstream().delete_stream("EVENTS")  # still declared: healed
    await proc.wait_for(is_action("created", stream="EVENTS"), after=mark, within=5)
    await asyncio.sleep(0.3)
    assert not await present(nc, "AUDIT")
    assert proc.count(is_action("created", stream="AUDIT"), after=mark) == 0


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param("[streams.RESULTS\nsubjects = 1\n", id="toml-syntax"),
        pytest.param('[streams.RESULTS]\nsubjects = ["results.>"]\nmax_age = -1\n', id="value"),
    ],
)
async def test_sighup_with_an_invalid_file_keeps_the_running_config(
    spawn: Spawn, repo_config: Path, nc: Client, audit: ApiAudit, broken: str
) -> None:
    """An invalid file at SIGHUP is refused with one error line naming the
    problem; the daemon keeps running the old config and still heals its
    resources; fixing the file and SIGHUP again reloads it."""
    proc = await ready(spawn, repo_config)
    good = read(repo_config)
    mark = proc.mark()
    write(repo_config, broken)
    proc.send(signal.SIGHUP)
    [line] = await proc.wait_for(is_action("reload_failed"), after=mark, within=5)
    assert line["level"] == "error"
    assert str(repo_config) in line["message"]
    if "max_age" in broken:
        assert "streams.RESULTS.max_age" in line["message"]
    await asyncio.sleep(0.2)
    assert proc.alive
    assert proc.count(lambda e: e.get("level") in ("error", "critical"), after=mark) == 1
    assert proc.count(is_action("reloaded"), after=mark) == 0

    await nc.jetstream().delete_key_value("jobs")  # declared only in the old file
    [healed] = await proc.wait_for(is_action("created", stream="KV_jobs"), after=mark)
    assert healed["trigger"] == "advisory"

    again = proc.mark()
    write(repo_config, good)
    proc.send(signal.SIGHUP)
    await proc.wait_for(is_action("reloaded"), after=again, within=5)


async def test_sighup_shortening_the_resync_interval_takes_effect(
    spawn: Spawn, broker: NatsServer, nc: Client, audit: ApiAudit, tmp_path: Path
) -> None:
    """With advisories off, a reload that shortens resync_interval from 1h to
    300ms makes the timer heal a delete within about a second."""
    small = '[streams.ONE]\nsubjects = ["one.>"]\n'
    path = tmp_path / "w.toml"
    daemon_config(path, broker.url, resources=small, watchdog={"advisories": False})
    proc = await ready(spawn, path)
    daemon_config(
        path,
        broker.url,
        resources=small,
        watchdog={"advisories": False, "resync_interval": "300ms"},
    )
    mark = proc.mark()
    proc.send(signal.SIGHUP)
    await proc.wait_for(is_pass("reload"), after=mark, within=5)
    await nc.jetstream().delete_stream("ONE")
    [line] = await proc.wait_for(is_action("created", stream="ONE"), after=mark, within=3)
    assert line["trigger"] == "resync"


async def test_sighup_turning_advisories_on_makes_deletes_heal_at_once(
    spawn: Spawn, broker: NatsServer, nc: Client, audit: ApiAudit, tmp_path: Path
) -> None:
    """A reload that switches advisories from false to true makes a later delete
    heal within a second (the resync is 1h away)."""
    path = tmp_path / "w.toml"
    daemon_config(path, broker.url, watchdog={"advisories": False})
    proc = await ready(spawn, path)
    daemon_config(path, broker.url, watchdog={"advisories": True})
    mark = proc.mark()
    proc.send(signal.SIGHUP)
    await proc.wait_for(is_pass("reload"), after=mark, within=5)
    await nc.jetstream().delete_stream("EXEC")
    [line] = await proc.wait_for(is_action("created", stream="EXEC"), after=mark, within=2)
    assert line["trigger"] == "advisory"


async def test_sighup_with_new_servers_is_applied_or_refused_visibly(
    spawn: Spawn, broker: NatsServer, repo_config: Path, audit: ApiAudit, tmp_path: Path
) -> None:
    """After the file's [nats] servers is changed to another broker and SIGHUP,
    the daemon either converges that broker or says the change needs a restart."""
    proc = await ready(spawn, repo_config)
    other = NatsServer(tmp_path, name="other").start()
    try:
        client = await connect(other.url)
        try:
            edit(repo_config, broker.url, other.url)
            mark = proc.mark()
            proc.send(signal.SIGHUP)
            await proc.wait_for(is_action("reloaded"), after=mark, within=5)
            await asyncio.sleep(1.5)
            converged = await stream_names(client) == ALL_STREAMS
            said_so = any(
                "restart" in str(line.get("message", ""))
                for line in proc.find(lambda e: e.get("level") in ("warning", "error"), after=mark)
            )
            assert converged or said_so
        finally:
            await client.close()
    finally:
        other.stop()


async def test_a_burst_of_sighups_is_survived_without_writes(
    spawn: Spawn, repo_config: Path, nc: Client, audit: ApiAudit
) -> None:
    """Twenty SIGHUPs 5 ms apart on an unchanged file: the daemon stays up,
    writes nothing, and runs no more reload passes than reloads it logged
    (the kernel may merge signals that arrive before the handler runs)."""
    proc = await ready(spawn, repo_config)
    await proc.quiet()
    await audit.settle(0.05)
    writes = audit.writes
    mark = proc.mark()
    for _ in range(20):
        proc.send(signal.SIGHUP)
        await asyncio.sleep(0.005)
    await proc.wait_for(is_action("reloaded"), after=mark, within=5)
    await proc.quiet()
    await audit.settle(0.05)
    assert proc.alive
    assert audit.writes == writes
    reloads = proc.count(is_action("reloaded"), after=mark)
    passes = proc.count(is_pass("reload"), after=mark)
    assert 1 <= passes <= reloads <= 20, (passes, reloads)
    assert audit.count("STREAM.LIST") == 1 + passes
    assert proc.count(lambda e: e.get("level") in ("warning", "error"), after=mark) == 0


async def test_blocked_resource_is_logged_once_across_resyncs_and_never_written(
    spawn: Spawn, broker: NatsServer, nc: Client, audit: ApiAudit, tmp_path: Path
) -> None:
    """A plain stream holding a declared KV bucket's name is reported as blocked
    once, not on every 300ms resync, and the daemon never writes to it."""
    await nc.request(
        "$JS.API.STREAM.CREATE.KV_jobs",
        json.dumps({"name": "KV_jobs", "subjects": ["jobs.>"]}).encode(),
        timeout=2,
    )
    config = daemon_config(
        tmp_path / "w.toml",
        broker.url,
        resources="[kv_buckets.jobs]\nhistory = 5\n\n[kv_buckets.schedules]\nhistory = 5\n",
        watchdog={"resync_interval": "300ms"},
    )
    proc = spawn(config)
    [blocked] = await proc.wait_for(is_action("blocked", stream="KV_jobs"), within=10)
    assert "not a KV bucket" in blocked["message"]
    await proc.wait_for(is_pass("resync"), n=4, within=5)
    await audit.settle(0.05)
    assert proc.count(is_action("blocked")) == 1
    assert [s for s in audit.subjects if s.endswith(".KV_jobs") and ".INFO." not in s] == []
    assert (await stream_info(nc, "KV_jobs"))["config"]["subjects"] == ["jobs.>"]
    assert await present(nc, "KV_schedules")


# --- 9. stopping -----------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_stop_signal_exits_0_promptly(
    spawn: Spawn, repo_config: Path, nc: Client, audit: ApiAudit, sig: signal.Signals
) -> None:
    """SIGTERM or SIGINT stops a converged daemon with exit 0 in well under its
    20s stop_timeout, after logging `stopping`."""
    proc = await ready(spawn, repo_config)
    started = time.monotonic()
    proc.send(sig)
    assert await proc.wait_exit(within=10) == 0
    assert time.monotonic() - started < 2.0
    assert proc.count(is_action("stopping")) == 1


async def test_sigterm_while_the_broker_is_down_exits_0_promptly(
    spawn: Spawn, broker: NatsServer, repo_config: Path, nc: Client, audit: ApiAudit
) -> None:
    """A daemon whose broker died (it is reconnecting) still stops at once on
    SIGTERM with exit 0."""
    proc = await ready(spawn, repo_config)
    mark = proc.mark()
    broker.kill()
    await proc.wait_for(is_action("broker_lost"), after=mark, within=5)
    started = time.monotonic()
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit(within=10) == 0
    assert time.monotonic() - started < 3.0
    broker.start()  # for the audit's teardown


async def test_sigterm_before_any_broker_was_reached_exits_0_promptly(
    spawn: Spawn, tmp_path: Path
) -> None:
    """A daemon still waiting for its first connection stops on SIGTERM with exit 0."""
    proc = spawn(daemon_config(tmp_path / "w.toml", f"nats://127.0.0.1:{free_port()}"))
    await proc.wait_for(is_action("waiting"), within=5)
    await asyncio.sleep(0.3)
    started = time.monotonic()
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit(within=10) == 0
    assert time.monotonic() - started < 3.0


async def test_invalid_config_at_start_exits_78_without_touching_the_broker(
    spawn: Spawn, broker: NatsServer, nc: Client, audit: ApiAudit, tmp_path: Path
) -> None:
    """`run` with an invalid file exits 78 (EX_CONFIG) with an error line that
    names the key path, and sends no request at all."""
    config = daemon_config(
        tmp_path / "w.toml",
        broker.url,
        resources='[streams.X]\nsubjects = ["x.>"]\nmax_age = "soon"\n',
    )
    proc = spawn(config)
    assert await proc.wait_exit(within=10) == 78
    errors = proc.find(lambda e: e.get("level") == "error")
    assert len(errors) == 1
    assert "streams.X.max_age" in errors[0]["message"]
    await audit.settle(0.1)
    assert audit.subjects == []


# --- 10. bursts are coalesced --------------------------------------------------------------


async def test_burst_of_100_updated_advisories_costs_few_reads_and_no_write(
    spawn: Spawn, repo_config: Path, nc: Client, audit: ApiAudit
) -> None:
    """100 well-formed UPDATED advisories for an in-sync RESULTS, published in
    one burst, are coalesced: no write, and far fewer than 100 reads."""
    await ready(spawn, repo_config)
    await audit.settle(0.1)
    writes = audit.writes
    reads = len(subjects_for(audit, "INFO", "RESULTS"))
    for _ in range(100):
        await nc.publish("$JS.EVENT.ADVISORY.STREAM.UPDATED.RESULTS", advisory("RESULTS"))
    await nc.flush()
    await eventually(
        _async(lambda: len(subjects_for(audit, "INFO", "RESULTS")) > reads),
        within=5,
        what="the daemon acted on the burst",
    )
    await asyncio.sleep(0.5)
    await audit.settle(0.05)
    burst_reads = len(subjects_for(audit, "INFO", "RESULTS")) - reads
    assert audit.writes == writes
    assert 1 <= burst_reads <= 25, burst_reads
    assert audit.count("STREAM.LIST") == 1  # the startup pass only: no full pass either


async def test_every_resource_deleted_at_once_is_healed_in_few_passes(
    spawn: Spawn, repo_config: Path, nc: Client, audit: ApiAudit
) -> None:
    """All 25 resources deleted in one go by another client are all back, each
    created exactly once, by advisory-driven passes."""
    proc = await ready(spawn, repo_config)
    mark = proc.mark()
    await asyncio.gather(
        *(nc.request(f"$JS.API.STREAM.DELETE.{s}", b"", timeout=2) for s in ALL_STREAMS)
    )
    lines = await proc.wait_for(is_action("created"), after=mark, n=25, within=10)
    assert {line["stream"] for line in lines} == ALL_STREAMS
    assert {line["trigger"] for line in lines} == {"advisory"}
    await asyncio.sleep(0.3)
    await audit.settle(0.05)
    assert proc.count(is_action("created"), after=mark) == 25
    assert audit.count("STREAM.CREATE") == 50  # startup + one heal each
    assert await stream_names(nc) == ALL_STREAMS


# --- 11. a permanent failure backs off -----------------------------------------------------


async def test_permanently_failing_stream_backs_off_while_others_heal(
    spawn: Spawn, tmp_path: Path
) -> None:
    """On a 200MB file store a 1GiB stream fails with a permanent error logged
    once, and is retried about once per permanent_retry (1s) even though a
    300ms resync runs; the small streams are created and healed meanwhile."""
    srv = NatsServer(tmp_path, jetstream_conf="max_file_store: 200MB", name="small").start()
    try:
        client = await connect(srv.url)
        try:
            seen = await ApiAudit(client, client_name=WATCHDOG_NAME).start()
            resources = "".join(
                f'[streams.{name}]\nsubjects = ["{name.lower()}.>"]\n{extra}\n'
                for name, extra in (
                    ("SMALL1", 'max_age = "1d"\n'),
                    ("SMALL2", ""),
                    ("BIG", 'max_bytes = "1GiB"\n'),
                    ("SMALL3", ""),
                )
            )
            config = daemon_config(
                tmp_path / "w.toml",
                srv.url,
                resources=resources,
                watchdog={"resync_interval": "300ms", "permanent_retry": "1s"},
            )
            proc = spawn(config)
            [failed] = await proc.wait_for(is_action("failed", stream="BIG"), within=10)
            started = time.monotonic()
            assert failed["level"] == "warning"
            assert "permanent" in failed["message"]
            assert "max_bytes 1GiB" in failed["error"]
            assert "max_file_store" in failed["error"]
            await proc.wait_for(is_action("created"), n=3, within=5)

            for name in ("SMALL1", "SMALL3"):
                mark = proc.mark()
                await client.jetstream().delete_stream(name)
                await proc.wait_for(is_action("created", stream=name), after=mark, within=5)

            await asyncio.sleep(max(0.0, 3.3 - (time.monotonic() - started)))
            await seen.settle(0.05)
            attempts = len(subjects_for(seen, "CREATE", "BIG"))
            # the first try, then one per 1-1.1 s over ~3.3 s; ten resyncs ran meanwhile
            assert 3 <= attempts <= 5, seen.subjects
            assert proc.count(is_pass("resync")) >= 6
            assert proc.count(is_action("failed", stream="BIG")) == 1
            assert proc.count(is_action("failed")) == 1
            assert proc.alive
            assert await stream_names(client) == {"SMALL1", "SMALL2", "SMALL3"}
            assert seen.destructive == 0
        finally:
            await client.close()
    finally:
        srv.stop()


async def test_permanent_failure_is_logged_once_while_other_streams_come_and_go(
    spawn: Spawn, tmp_path: Path
) -> None:
    """A stream that cannot fit logs `failed` once, even when unrelated capped
    streams are created by another client between its retries."""
    srv = NatsServer(tmp_path, jetstream_conf="max_file_store: 200MB", name="small").start()
    try:
        client = await connect(srv.url)
        try:
            config = daemon_config(
                tmp_path / "w.toml",
                srv.url,
                resources='[streams.BIG]\nsubjects = ["big.>"]\nmax_bytes = "1GiB"\n',
                watchdog={"permanent_retry": "200ms"},
            )
            seen = await ApiAudit(client, client_name=WATCHDOG_NAME).start()
            proc = spawn(config)
            await proc.wait_for(is_action("failed", stream="BIG"), within=10)
            for i in range(3):
                body = {"name": f"OTHER{i}", "subjects": [f"other{i}.>"], "max_bytes": 10 * MIB}
                answer = await client.request(
                    f"$JS.API.STREAM.CREATE.OTHER{i}", json.dumps(body).encode(), timeout=2
                )
                assert "error" not in json.loads(answer.data)
                before = proc.count(_big_attempt)
                await proc.wait_for(_big_attempt, n=before + 2, within=3)
            await seen.settle(0.05)
            assert seen.destructive == 0
            assert proc.count(is_action("failed", stream="BIG")) == 1
        finally:
            await client.close()
    finally:
        srv.stop()


def failed_attempt(label: str) -> Callable[[dict[str, Any]], bool]:
    """A log line of one failed try on `label`: the warning (logged once per
    distinct error) or its debug-level repeats."""

    def check(line: dict[str, Any]) -> bool:
        message = str(line.get("message", ""))
        return (line.get("action") == "failed" and line.get("resource") == label) or (
            message.startswith((f"{label} failing:", f"{label} still failing:"))
        )

    return check


_big_attempt = failed_attempt("BIG")


# --- 14. garbage on the advisory subjects ------------------------------------------------


async def test_garbage_on_advisory_subjects_is_ignored(
    spawn: Spawn, repo_config: Path, nc: Client, audit: ApiAudit
) -> None:
    """Malformed JSON, wrong types, unknown stream names and a 200 KB payload on
    the advisory subjects cause no request at all; a genuine advisory right
    after them is still acted on, and the daemon keeps healing."""
    proc = await ready(spawn, repo_config)
    await proc.quiet()  # past the second look the daemon takes after its creates
    await audit.settle(0.1)
    seen_before = len(audit.subjects)
    prefix = "$JS.EVENT.ADVISORY.STREAM"
    big = json.dumps({"type": ADVISORY, "stream": "RESULTS", "pad": "x" * 200_000}).encode()
    garbage: list[tuple[str, bytes]] = [
        (f"{prefix}.DELETED.RESULTS", b"{not json"),
        (f"{prefix}.DELETED.RESULTS", b""),
        (f"{prefix}.DELETED.RESULTS", b"\xff\xfe\x00binary"),
        (f"{prefix}.DELETED.RESULTS", b"[1, 2, 3]"),
        (f"{prefix}.DELETED.RESULTS", b'"a string"'),
        (f"{prefix}.DELETED.RESULTS", json.dumps({"type": "other", "stream": "RESULTS"}).encode()),
        (f"{prefix}.DELETED.RESULTS", advisory("EXEC")),  # body names another stream
        (f"{prefix}.DELETED.NOPE", advisory("NOPE")),  # not declared
        (f"{prefix}.EXPLODED.RESULTS", advisory("RESULTS")),  # not an action
        (f"{prefix}.UPDATED.RESULTS", big),
        (f"{prefix}.UPDATED.RESULTS", b"{" * 10_000),
    ]
    for subject, payload in garbage:
        await nc.publish(subject, payload)
    await nc.publish(f"{prefix}.UPDATED.AUDIT", advisory("AUDIT"))  # the sentinel
    await nc.flush()
    await eventually(
        _async(lambda: bool(subjects_for(audit, "INFO", "AUDIT"))),
        within=5,
        what="the genuine advisory was acted on",
    )
    await asyncio.sleep(0.2)
    await audit.settle(0.05)
    assert audit.subjects[seen_before:] == ["$JS.API.STREAM.INFO.AUDIT"]
    assert proc.alive

    mark = proc.mark()
    await nc.jetstream().delete_stream("RESULTS")
    await proc.wait_for(is_action("created", stream="RESULTS"), after=mark, within=5)


async def test_forged_deleted_advisory_for_an_existing_stream_writes_nothing(
    spawn: Spawn, repo_config: Path, nc: Client, audit: ApiAudit
) -> None:
    """A well-formed DELETED advisory from another client for a stream that is
    there and in sync causes no write and no `created` line."""
    proc = await ready(spawn, repo_config)
    await proc.quiet()
    await audit.settle(0.05)
    writes = audit.writes
    requests = len(audit.subjects)
    stamp = (await stream_info(nc, "RESULTS"))["created"]
    mark = proc.mark()
    await nc.publish(
        "$JS.EVENT.ADVISORY.STREAM.DELETED.RESULTS", advisory("RESULTS", action="delete")
    )
    await nc.flush()
    await eventually(
        _async(lambda: len(audit.subjects) > requests),
        within=5,
        what="the daemon acted on the advisory",
    )
    await proc.quiet()
    await audit.settle(0.05)
    assert (await stream_info(nc, "RESULTS"))["created"] == stamp  # really never gone
    assert proc.count(is_action("created"), after=mark) == 0
    assert audit.writes == writes, audit.subjects[requests:]


# --- 15. a lost advisory costs milliseconds; an idle daemon is silent ---------------------

SMALL = '[streams.ORDERS]\nsubjects = ["orders.>"]\n\n[streams.EVENTS]\nsubjects = ["ev.>"]\n'


async def test_with_advisories_off_a_delete_right_after_a_create_is_healed_at_once(
    spawn: Spawn, broker: NatsServer, nc: Client, audit: ApiAudit, tmp_path: Path
) -> None:
    """The broker may drop the DELETED advisory of a stream deleted right after
    it was created. With advisories off altogether (the worst case), such a
    delete is healed by the second look the daemon takes shortly after its
    create (trigger verify), well within a second, not by the resync an hour
    away."""
    config = daemon_config(
        tmp_path / "w.toml", broker.url, resources=SMALL, watchdog={"advisories": False}
    )
    proc = spawn(config)
    await proc.wait_for(is_action("created", stream="ORDERS"), within=10)
    await nc.jetstream().delete_stream("ORDERS")
    deleted_at = time.time()
    lines = await proc.wait_for(is_action("created", stream="ORDERS"), n=2, within=3)
    assert lines[1]["trigger"] == "verify"
    assert float(lines[1]["ts"]) - deleted_at < 1.0
    assert await present(nc, "ORDERS")
    await proc.quiet()
    await audit.settle(0.05)
    assert len(subjects_for(audit, "CREATE", "ORDERS")) == 2
    assert proc.count(is_action("created", stream="EVENTS")) == 1


async def test_an_idle_daemon_sends_no_request_after_a_transient_failure(
    spawn: Spawn, broker: NatsServer, nc: Client, audit: ApiAudit, tmp_path: Path
) -> None:
    """A read that times out on a stalled path (a transient failure, retried
    with backoff) and then succeeds once the path resumes leaves nothing
    scheduled: over a quiet period longer than backoff_max the broker's
    audit shows not one request from the daemon."""
    proxy = await StallProxy(broker.port).start()
    try:
        config = daemon_config(tmp_path / "w.toml", proxy.url, resources=SMALL)
        proc = await ready(spawn, config)
        await proc.quiet()
        mark = proc.mark()
        proxy.stall(upstream=True)  # the daemon's requests wait; advisories still arrive
        await nc.publish("$JS.EVENT.ADVISORY.STREAM.UPDATED.ORDERS", advisory("ORDERS"))
        await nc.flush()
        await proc.wait_for(failed_attempt("ORDERS"), after=mark, within=5)
        infos = len(subjects_for(audit, "INFO", "ORDERS"))
        proxy.resume()
        await eventually(
            _async(lambda: len(subjects_for(audit, "INFO", "ORDERS")) > infos),
            within=5,
            what="a read of ORDERS after the path resumed",
        )
        await proc.quiet(0.3)
        await audit.settle(0.1)
        before = list(audit.subjects)
        await asyncio.sleep(2.0)  # twice backoff_max: any retry left would show
        await audit.settle(0.1)
        assert audit.subjects[len(before) :] == []
        assert proc.alive
    finally:
        await proxy.close()
