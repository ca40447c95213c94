"""The ownership marker: what a watchdog stamps on the streams it writes, and how
far another writer's marker is obeyed.

- Writer identity (issue 12 item 2): the same writer with an edited file at the
  same spec_version applies its change (edit, then restart or `apply`); two
  writers with different content at one spec_version are still a conflict.
- Bounded trust (issue 10 item 10): a spec_version more than
  SPEC_VERSION_MARGIN above this config's is reported as suspicious and not
  obeyed; `force_spec` (setting or keyword) obeys no marker at all.
Pure cases first, then a real nats-server through the command line and the daemon.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from kanade_watchdog.config.load import parse
from kanade_watchdog.config.writer import writer_id
from kanade_watchdog.core import desired
from kanade_watchdog.core.plan import SPEC_VERSION_MARGIN, Action, Decision, Observed, decide, plan
from kanade_watchdog.model.errors import ConfigError
from kanade_watchdog.model.resources import Kind, Resource
from tests.daemonproc import DaemonProc, daemon_config, is_action
from tests.helpers_streams import (
    new_audit,
    raw_update,
    run_cli,
    stream_info,
    write_config,
)
from tests.natsserver import NatsServer

SEC = 1_000_000_000
HOUR = 3600 * SEC
DAY = 24 * HOUR
NOW = datetime(2025, 6, 1, 12, 0, 0)
INT32_MAX = 2**31 - 1

HELD: dict[str, Any] = {
    "name": "S1",
    "subjects": ["s1.>"],
    "retention": "limits",
    "max_msgs": -1,
    "max_bytes": -1,
    "max_age": 0,
    "discard": "old",
    "storage": "file",
    "num_replicas": 1,
    "duplicate_window": 120 * SEC,
    "metadata": {"_nats.req.level": "0"},
}


def mine(version: int = 3, writer: str = "host-a", **declared: Any) -> Resource:
    return Resource(
        Kind.STREAM,
        "S1",
        {"subjects": ("s1.>",), "max_age": DAY, **declared},
        spec_version=version,
        writer=writer,
    )


def marked(
    version: int, digest: str = "0123456789abcdef", writer: str | None = None, **fields: Any
) -> Observed:
    """S1 as the broker holds it, stamped with someone's marker."""
    config = copy.deepcopy(HELD)
    config.update(fields)
    config["metadata"].update(
        {
            desired.MANAGED_BY_KEY: desired.MANAGED_BY,
            desired.SPEC_VERSION_KEY: str(version),
            desired.SPEC_HASH_KEY: digest,
        }
    )
    if writer is not None:
        config["metadata"][desired.WRITER_KEY] = writer
    return Observed(config=config)


def judge(resource: Resource, observed: Observed, **kw: Any) -> Decision:
    return decide(resource, observed, NOW, **kw)


# --- the marker's keys --------------------------------------------------------------------


def test_every_marker_key_is_under_the_reserved_prefix() -> None:
    """MARKER_PREFIX names every key the marker writes, so validation can refuse
    declared metadata under it."""
    assert desired.MARKER_PREFIX == "kanade."
    assert all(key.startswith(desired.MARKER_PREFIX) for key in desired.MARKER_KEYS)
    assert set(desired.marker(mine())) <= set(desired.MARKER_KEYS)


def test_writes_stamp_the_writer() -> None:
    """Creates and updates carry kanade.writer; an update by a resource that records
    no writer drops an earlier one instead of mixing two markers."""
    resource = mine(writer="host-a")
    create = judge(resource, marked(1, writer="host-b", max_age=HOUR))
    assert create.send is not None
    assert create.send["metadata"][desired.WRITER_KEY] == "host-a"
    created = decide(resource, None, NOW)
    assert created.send is not None
    assert created.send["metadata"][desired.WRITER_KEY] == "host-a"
    anonymous = judge(dataclasses.replace(resource, writer=""), marked(1, writer="host-b"))
    assert anonymous.send is not None
    assert desired.WRITER_KEY not in anonymous.send["metadata"]


def test_observed_marker_reads_the_writer() -> None:
    """The writer is read back; markers from before writers were recorded have none."""
    assert desired.observed_marker(marked(2, "ab", "host-a").config) == desired.Marker(
        2, "ab", "host-a"
    )
    assert desired.observed_marker(marked(2, "ab").config) == desired.Marker(2, "ab", None)


# --- writer identity: edit and restart ------------------------------------------------------


def test_same_writer_edited_file_same_version_is_applied() -> None:
    """This writer's own earlier content at the same spec_version is not a conflict:
    the edit is applied."""
    decision = judge(mine(3, "host-a"), marked(3, writer="host-a", max_age=HOUR))
    assert decision.action is Action.UPDATE
    assert not decision.conflict


def test_other_writer_same_version_different_content_is_a_conflict() -> None:
    """Another writer's different content at the same spec_version: blocked, no write."""
    decision = judge(mine(3, "host-a"), marked(3, writer="host-b", max_age=HOUR))
    assert decision.action is Action.BLOCKED
    assert decision.conflict
    assert decision.send is None
    assert "host-b" in decision.reason
    assert "raise spec_version" in decision.reason


def test_marker_without_writer_is_treated_as_before() -> None:
    """A marker written before writers were recorded, at the same version with other
    content, stays a conflict."""
    decision = judge(mine(3, "host-a"), marked(3, max_age=HOUR))
    assert decision.action is Action.BLOCKED
    assert decision.conflict


def test_other_writer_same_content_is_ordinary_drift() -> None:
    """Same content from another writer: drift is reverted as usual."""
    resource = mine(3, "host-a")
    decision = judge(resource, marked(3, desired.spec_hash(resource), "host-b", max_age=HOUR))
    assert decision.action is Action.UPDATE


def test_an_unprintable_writer_is_not_echoed() -> None:
    """A writer read from the broker is shown only when it looks like one."""
    decision = judge(mine(3, "host-a"), marked(3, writer="x\n INFO forged", max_age=HOUR))
    assert decision.conflict
    assert "forged" not in decision.reason
    assert "\n" not in decision.reason


def test_newer_version_by_the_same_writer_says_how_to_roll_back() -> None:
    """A newer spec this very writer left (the file was rolled back) is still left
    alone, with the way out spelt out."""
    decision = judge(mine(3, "host-a"), marked(5, writer="host-a"))
    assert decision.action is Action.NEWER_SPEC
    assert "spec_version 6" in decision.reason


# --- bounded trust in spec_version ------------------------------------------------------------


def test_marker_within_the_margin_is_obeyed() -> None:
    """Up to SPEC_VERSION_MARGIN above this config, a newer marker is obeyed."""
    decision = judge(mine(3), marked(3 + SPEC_VERSION_MARGIN, max_age=HOUR))
    assert decision.action is Action.NEWER_SPEC
    assert not decision.suspicious_marker


def test_forged_marker_beyond_the_margin_is_not_obeyed() -> None:
    """Issue 10 item 10: spec_version 2147483647 with max_age forced to 1s. The
    marker is suspicious, not obeyed, and max_age is put back."""
    decision = judge(mine(3), marked(INT32_MAX, writer="evil", max_age=SEC))
    assert decision.action is Action.UPDATE
    assert decision.suspicious_marker
    assert any("suspicious marker" in w and str(INT32_MAX) in w for w in decision.warnings)
    assert [str(c) for c in decision.changes] == ["max_age: 1s -> 1d"]
    assert decision.send is not None
    assert decision.send["metadata"][desired.SPEC_VERSION_KEY] == "3"


def test_forged_marker_on_an_in_sync_stream_is_reported() -> None:
    """Nothing to write, but the decision still says the marker is suspicious."""
    decision = judge(mine(3), marked(3 + SPEC_VERSION_MARGIN + 1, max_age=DAY))
    assert decision.action is Action.IN_SYNC
    assert decision.suspicious_marker
    assert decision.warnings


def test_unreadable_huge_version_is_no_marker() -> None:
    """A version too long to be a number is no marker: the stream is adopted."""
    observed = marked(1, max_age=SEC)
    observed.config["metadata"][desired.SPEC_VERSION_KEY] = "9" * 5000
    assert judge(mine(3), observed).action is Action.UPDATE


def test_force_spec_keyword_ignores_a_newer_marker() -> None:
    """decide(force_spec=True) and plan(force_spec=True) manage a resource a newer
    spec wrote, with a warning that says so."""
    observed = marked(5, writer="host-b", max_age=HOUR)
    decision = judge(mine(3), observed, force_spec=True)
    assert decision.action is Action.UPDATE
    assert any("force_spec" in w for w in decision.warnings)
    [planned] = plan([mine(3)], {"S1": observed}, NOW, force_spec=True)
    assert planned.action is Action.UPDATE
    assert plan([mine(3)], {"S1": observed}, NOW)[0].action is Action.NEWER_SPEC


def test_force_spec_overrides_an_equal_version_conflict() -> None:
    """With force_spec, this file wins over another writer's equal spec_version too."""
    decision = judge(mine(3, "host-a"), marked(3, writer="host-b", max_age=HOUR), force_spec=True)
    assert decision.action is Action.UPDATE
    assert not decision.conflict


def test_force_spec_setting_reaches_the_planner() -> None:
    """[watchdog] force_spec = true is carried on every resource and obeyed."""
    document = {
        "spec_version": 3,
        "watchdog": {"force_spec": True},
        "streams": {"S1": {"subjects": ["s1.>"], "max_age": "1d"}},
    }
    config = parse(document, "w.toml")
    assert config.watchdog.force_spec
    [resource] = config.resources
    assert resource.force_spec
    assert judge(resource, marked(5, max_age=HOUR)).action is Action.UPDATE


# --- the writer identity setting ---------------------------------------------------------


def _document(**watchdog: Any) -> dict[str, Any]:
    return {"watchdog": watchdog, "streams": {"S1": {"subjects": ["s1.>"]}}}


def test_watchdog_id_is_the_writer() -> None:
    """[watchdog] id names the writer on the config and every resource."""
    config = parse(_document(id="broker-2"), "w.toml")
    assert config.watchdog.id == "broker-2"
    assert config.writer == "broker-2"
    assert {r.writer for r in config.resources} == {"broker-2"}


def test_default_writer_is_this_host_and_file(tmp_path: Path) -> None:
    """Without an id, the writer is derived from this machine and the file's absolute
    path: the same for one file (however it is named), different for another."""
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    config = parse(_document(), str(a))
    assert config.writer == writer_id(str(a))
    assert len(config.writer) == 12
    assert writer_id(str(a)) == writer_id(str(tmp_path / "." / "a.toml"))
    assert writer_id(str(a)) != writer_id(str(b))
    machine = Path("/etc/machine-id")
    if machine.exists():
        assert machine.read_text().strip()[:8] not in config.writer


@pytest.mark.parametrize("value", ["", "two words", "x" * 65, 7, "tab\there", "newline\n", "ünï"])
def test_bad_watchdog_id_is_a_config_error(value: Any) -> None:
    """An id that is not short printable text is refused, naming watchdog.id."""
    with pytest.raises(ConfigError) as info:
        parse(_document(id=value), "w.toml")
    assert "w.toml: watchdog.id:" in str(info.value)


# --- on a real broker -------------------------------------------------------------------

STREAM_BODY = '[streams.RESULTS]\nsubjects = ["results.>"]\nmax_age = "{age}"\n'


def _config(tmp_path: Path, url: str, name: str, *, age: str, watchdog: str = "") -> Path:
    """One stream RESULTS with `age`, and `watchdog` settings if given."""
    body = STREAM_BODY.format(age=age) + (f"\n[watchdog]\n{watchdog}\n" if watchdog else "")
    return write_config(tmp_path, url, body, name=name)


async def test_edit_and_apply_again_with_the_same_file_is_applied(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """Issue 12 item 2 with `apply`: apply, edit max_age at the same spec_version,
    apply again from the same file: updated, not blocked."""
    config = _config(tmp_path, server.url, "watchdog.toml", age="1d")
    assert (await run_cli("apply", config=config)).code == 0
    config.write_text(config.read_text().replace('"1d"', '"2d"'))
    run = await run_cli("apply", "--json", config=config)
    assert run.code == 0, run.stdout
    assert run.resources()["RESULTS"]["result"] == "updated"
    assert (await stream_info(client, "RESULTS"))["config"]["max_age"] == 2 * DAY


async def test_edit_and_restart_the_daemon_is_applied(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """Issue 12 item 2 with the daemon: run, stop, edit max_age at the same
    spec_version, run again: the change is applied and nothing is blocked."""
    resources = STREAM_BODY.format(age="1d")
    config = daemon_config(tmp_path / "watchdog.toml", server.url, resources=resources)
    first = DaemonProc(config).start()
    try:
        await first.wait_for(is_action("ready"), within=15)
        first.send(signal.SIGTERM)
        assert await first.wait_exit() == 0
    finally:
        first.close()
    config.write_text(config.read_text().replace('"1d"', '"2d"'))
    second = DaemonProc(config).start()
    try:
        await second.wait_for(is_action("ready"), within=15)
        await second.wait_for(is_action("updated", stream="RESULTS"), within=5)
        assert second.count(is_action("blocked")) == 0, second.tail()
        second.send(signal.SIGTERM)
        assert await second.wait_exit() == 0
    finally:
        second.close()
    assert (await stream_info(client, "RESULTS"))["config"]["max_age"] == 2 * DAY


async def test_two_writers_with_different_content_at_one_version_conflict(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """Two hosts (different [watchdog] id) with different files at the same
    spec_version: the second is blocked as a conflict and sends no write; raising
    its spec_version lets it apply."""
    host_a = _config(tmp_path, server.url, "a.toml", age="1d", watchdog='id = "host-a"')
    host_b = _config(tmp_path, server.url, "b.toml", age="2d", watchdog='id = "host-b"')
    assert (await run_cli("apply", config=host_a)).code == 0

    audit = await new_audit(client)
    run = await run_cli("apply", "--json", config=host_b)
    await audit.settle()
    await audit.stop()
    assert run.code == 1, run.stdout
    results = run.resources()["RESULTS"]
    assert results["result"] == "blocked"
    assert "host-a" in results["reason"]
    assert audit.writes == 0, audit.verbs
    assert (await stream_info(client, "RESULTS"))["config"]["max_age"] == DAY

    host_b.write_text("spec_version = 2\n" + host_b.read_text())
    run = await run_cli("apply", "--json", config=host_b)
    assert run.resources()["RESULTS"]["result"] == "updated", run.stdout
    info = await stream_info(client, "RESULTS")
    assert info["config"]["max_age"] == 2 * DAY
    assert info["config"]["metadata"][desired.WRITER_KEY] == "host-b"


async def test_forged_spec_version_cannot_lock_the_watchdog_out(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """Issue 10 item 10: someone stamps kanade.spec_version = 2147483647 and sets
    max_age 1s; apply does not obey the marker and puts max_age back."""
    config = _config(tmp_path, server.url, "watchdog.toml", age="30d")
    assert (await run_cli("apply", config=config)).code == 0
    metadata = dict((await stream_info(client, "RESULTS"))["config"]["metadata"])
    metadata[desired.SPEC_VERSION_KEY] = str(INT32_MAX)
    await raw_update(client, "RESULTS", max_age=SEC, duplicate_window=SEC, metadata=metadata)

    run = await run_cli("apply", "--json", config=config)
    assert run.code == 0, run.stdout
    assert run.resources()["RESULTS"]["result"] == "updated"
    info = await stream_info(client, "RESULTS")
    assert info["config"]["max_age"] == 30 * DAY
    assert info["config"]["metadata"][desired.SPEC_VERSION_KEY] == "1"


async def test_check_warns_of_a_forged_marker_it_does_not_obey(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """A marker far beyond this config's spec_version on an in-sync stream:
    check says WARNING and names it, in the text, the perfdata and the JSON."""
    config = _config(tmp_path, server.url, "watchdog.toml", age="30d")
    assert (await run_cli("apply", config=config)).code == 0
    metadata = dict((await stream_info(client, "RESULTS"))["config"]["metadata"])
    metadata[desired.SPEC_VERSION_KEY] = str(INT32_MAX)
    await raw_update(client, "RESULTS", metadata=metadata)

    run = await run_cli("check", config=config)
    assert run.code == 1, run.stdout
    assert run.stdout.startswith("JETSTREAM WARNING - suspicious marker not obeyed: RESULTS")
    assert "suspicious_marker=1" in run.stdout
    doc = json.loads((await run_cli("check", "--json", config=config)).stdout)
    assert doc["suspicious_marker"] == ["RESULTS"]
    plan = await run_cli("plan", config=config)
    assert "WARNING suspicious marker" in plan.stdout, plan.stdout


async def test_force_spec_setting_takes_back_a_resource_from_a_newer_spec(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """A newer marker within the margin is obeyed (no write) until the operator sets
    [watchdog] force_spec = true."""
    config = _config(tmp_path, server.url, "watchdog.toml", age="30d")
    assert (await run_cli("apply", config=config)).code == 0
    metadata = dict((await stream_info(client, "RESULTS"))["config"]["metadata"])
    metadata[desired.SPEC_VERSION_KEY] = "5"
    await raw_update(client, "RESULTS", max_age=HOUR, metadata=metadata)

    audit = await new_audit(client)
    run = await run_cli("apply", "--json", config=config)
    await audit.settle()
    await audit.stop()
    assert run.resources()["RESULTS"]["result"] == "newer_spec", run.stdout
    assert audit.writes == 0, audit.verbs

    config.write_text(config.read_text() + "\n[watchdog]\nforce_spec = true\n")
    run = await run_cli("apply", "--json", config=config)
    assert run.resources()["RESULTS"]["result"] == "updated", run.stdout
    assert (await stream_info(client, "RESULTS"))["config"]["max_age"] == 30 * DAY
