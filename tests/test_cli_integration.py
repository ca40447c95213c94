"""Exit codes and output of the one-shot commands, as a unit or a CI job sees them.

Every command runs in a subprocess (`python -m kanade_watchdog`) against a
real nats-server, an address where nothing listens, a broker without
JetStream, or a bad config file. `run_cli` fails any run that prints a
traceback. Table of codes: kanade_watchdog/model/exitcodes.py.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from tests.audit import ApiAudit
from tests.conftest import config_for
from tests.helpers_streams import (
    NS_PER_DAY,
    RESOURCE_JSON_KEYS,
    TOP_JSON_KEYS,
    PlainNatsServer,
    raw_create,
    raw_update,
    run_cli,
    watchdog_audit,
)
from tests.natsserver import NatsServer, free_port

UNREACHABLE_DEADLINE = 10.0  # seconds a command may take to say "unreachable"
ELAPSED = r"(<1 ms|\d+ ms|\d+(\.\d)? s)"  # how apply's summary words its time


@pytest.fixture
async def audit(client: Client) -> AsyncIterator[ApiAudit]:
    """Every watchdog API call during the test; fails it on any delete/purge."""
    async with watchdog_audit(client) as seen:
        yield seen


@pytest.fixture
def repo_config(server: NatsServer, tmp_path: Path) -> Path:
    return config_for(server.url, tmp_path)


@pytest.fixture
def unreachable_config(tmp_path: Path) -> Path:
    """The repo config pointed at a loopback port nothing listens on."""
    return config_for(f"nats://127.0.0.1:{free_port()}", tmp_path)


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text('[streams.RESULTS]\nsubjects = ["results.>"]\nmax_age = "thirty days"\n')
    return path


@pytest.fixture
def no_jetstream_server(tmp_path: Path) -> Iterator[NatsServer]:
    srv = PlainNatsServer(tmp_path, name="plain").start()
    yield srv
    srv.stop()


async def _converge(config: Path) -> None:
    run = await run_cli("apply", config=config)
    assert run.code == 0, run.stdout + run.stderr


# --- validate ---------------------------------------------------------------------------


async def test_validate_accepts_the_repo_config_without_a_broker(unreachable_config: Path) -> None:
    """validate exits 0 on the shipped config and counts 25 resources, with no
    broker running at the configured address (it never connects)."""
    run = await run_cli("validate", config=unreachable_config)
    assert run.code == 0
    assert run.stdout.strip().endswith("OK (25 resources)")


async def test_validate_rejects_a_bad_config_with_78_and_the_key_path(bad_config: Path) -> None:
    """validate exits 78 (EX_CONFIG) on a bad value and names the key path on stderr."""
    run = await run_cli("validate", config=bad_config)
    assert run.code == 78
    assert "streams.RESULTS.max_age" in run.stderr
    assert "'thirty days'" in run.stderr


@pytest.mark.parametrize("command", ["validate", "plan", "apply"])
async def test_missing_config_file_exits_78(command: str, tmp_path: Path) -> None:
    """validate, plan and apply exit 78 when the config file does not exist."""
    run = await run_cli(command, config=tmp_path / "nowhere.toml")
    assert run.code == 78
    assert "no such file" in run.stderr


# --- plan -------------------------------------------------------------------------------


async def test_plan_exit_codes_pending_then_in_sync(repo_config: Path, audit: ApiAudit) -> None:
    """plan exits 2 while anything is missing and 0 once apply has converged."""
    pending = await run_cli("plan", config=repo_config)
    assert pending.code == 2
    assert (
        pending.stdout.strip().splitlines()[-1] == f"0/25 in sync; 25 create (config {repo_config})"
    )
    await _converge(repo_config)
    in_sync = await run_cli("plan", config=repo_config)
    assert in_sync.code == 0
    assert in_sync.stdout.strip() == f"25/25 in sync (config {repo_config})"
    await audit.settle()
    assert audit.writes == 25  # only apply wrote


async def test_plan_exits_2_on_drift_and_names_the_field(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """plan exits 2 on a drifted field and shows it as current -> desired."""
    await _converge(repo_config)
    await raw_update(client, "RESULTS", max_age=1 * NS_PER_DAY)
    run = await run_cli("plan", config=repo_config)
    assert run.code == 2
    assert "~ stream RESULTS: update" in run.stdout
    assert "    max_age: 1d -> 30d" in run.stdout


@pytest.mark.parametrize("command", ["plan", "apply"])
async def test_unreachable_broker_exits_1_quickly(command: str, unreachable_config: Path) -> None:
    """plan and apply exit 1 within seconds when nothing listens at the
    configured address, with one 'broker error' line on stderr and, with
    --json, the same error and the exit code as a JSON document on stdout."""
    run = await run_cli(command, "--json", config=unreachable_config)
    assert run.code == 1
    assert run.seconds < UNREACHABLE_DEADLINE
    assert run.stderr.startswith("broker error: cannot connect to nats://127.0.0.1:")
    assert len(run.stderr.strip().splitlines()) == 1
    doc = run.json()
    assert doc["error"] == run.stderr.strip()
    assert doc["exit_code"] == 1
    assert doc["in_sync"] is False
    assert doc["config"] == str(unreachable_config)


@pytest.fixture
async def silent_config(tmp_path: Path) -> AsyncIterator[Path]:
    """The repo config (connect_timeout 500ms) pointed at a listener that
    accepts connections and never says a word: a hung or firewalled broker."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    listener = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    path = config_for(f"nats://127.0.0.1:{port}", tmp_path)
    text = path.read_text()
    assert 'connect_timeout = "2s"' in text
    path.write_text(text.replace('connect_timeout = "2s"', 'connect_timeout = "500ms"'))
    yield path
    for writer in held:
        writer.close()
    listener.close()
    await listener.wait_closed()


@pytest.mark.parametrize(("command", "code"), [("plan", 1), ("apply", 1), ("check", 2)])
async def test_silent_broker_counts_as_unreachable_within_the_deadline(
    command: str, code: int, silent_config: Path
) -> None:
    """A peer that accepts the TCP connection but never answers is reported as
    unreachable (plan/apply 1, check 2 CRITICAL) within seconds."""
    run = await run_cli(command, config=silent_config)
    assert run.code == code
    assert run.seconds < UNREACHABLE_DEADLINE
    assert "cannot connect to nats://127.0.0.1:" in run.stdout + run.stderr


async def test_silent_broker_error_names_the_cause(silent_config: Path) -> None:
    """The 'cannot connect' line for a silent peer says why (a timeout), not
    an empty string after the colon."""
    run = await run_cli("plan", config=silent_config)
    assert run.code == 1
    assert re.search(r"cannot connect to nats://\S+: \S", run.stderr), run.stderr


@pytest.mark.parametrize("command", ["plan", "apply"])
async def test_broker_without_jetstream_exits_1(
    command: str, no_jetstream_server: NatsServer, tmp_path: Path
) -> None:
    """plan and apply exit 1 and say JetStream is off when the broker has none."""
    run = await run_cli(command, config=config_for(no_jetstream_server.url, tmp_path))
    assert run.code == 1
    assert "JetStream off" in run.stderr


# --- apply ------------------------------------------------------------------------------


async def test_apply_exit_codes_0_when_converged_1_when_blocked(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """apply exits 0 when everything ends in sync (created or already there) and
    1 when a resource is blocked."""
    first = await run_cli("apply", config=repo_config)
    assert first.code == 0
    assert first.stdout.strip().splitlines()[-1].startswith("25 created (")
    second = await run_cli("apply", config=repo_config)
    assert second.code == 0
    assert re.fullmatch(
        rf"25 in_sync \(1 request, {ELAPSED}; config {re.escape(str(repo_config))}\)",
        second.stdout.strip(),
    ), second.stdout

    await raw_create(client, {"name": "OBJ_probe", "subjects": ["probe.>"]})
    blocked = _with_extra_object_store(repo_config, "probe")
    third = await run_cli("apply", config=blocked)
    assert third.code == 1
    assert (
        "object store probe: blocked (stream OBJ_probe exists but is not an object store"
        in third.stdout
    )
    assert third.stdout.strip().splitlines()[-1].startswith("25 in_sync, 1 blocked (")


def _with_extra_object_store(config: Path, bucket: str) -> Path:
    extended = config.with_name("extended.toml")
    extended.write_text(config.read_text() + f"\n[object_stores.{bucket}]\n")
    return extended


# --- check ------------------------------------------------------------------------------


async def test_check_ok_exits_0_with_one_status_line(repo_config: Path, audit: ApiAudit) -> None:
    """check exits 0 with 'JETSTREAM OK - 25/25 in sync' and perfdata once all is in place."""
    await _converge(repo_config)
    run = await run_cli("check", config=repo_config)
    assert run.code == 0
    lines = run.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("JETSTREAM OK - 25/25 in sync | resources=25 in_sync=25 ")
    await audit.settle()
    assert audit.writes == 25  # check itself never writes


async def test_check_warning_exits_1_on_drift(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """check exits 1 (WARNING) and names the drifted resource; it fixes nothing."""
    await _converge(repo_config)
    await raw_update(client, "KV_jobs", max_msgs_per_subject=2)
    run = await run_cli("check", config=repo_config)
    assert run.code == 1
    assert run.stdout.startswith("JETSTREAM WARNING - drifted: kv:jobs | ")
    await audit.settle()
    assert audit.count("STREAM.UPDATE") == 0


async def test_check_warning_exits_1_on_blocked(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """check exits 1 (WARNING) when a resource is blocked (a stream of the wrong
    shape holds a bucket's name) and everything else is in place."""
    await raw_create(client, {"name": "KV_jobs", "subjects": ["jobs.>"]})
    applied = await run_cli("apply", config=repo_config)
    assert applied.code == 1
    run = await run_cli("check", config=repo_config)
    assert run.code == 1
    assert run.stdout.startswith("JETSTREAM WARNING - blocked: kv:jobs | ")


async def test_check_critical_exits_2_on_missing_resource(
    repo_config: Path, audit: ApiAudit
) -> None:
    """check exits 2 (CRITICAL) and lists what is missing; it creates nothing."""
    run = await run_cli("check", config=repo_config)
    assert run.code == 2
    assert run.stdout.startswith("JETSTREAM CRITICAL - missing: INVENTORY, RESULTS, ")
    assert "missing=25 " in run.stdout
    await audit.settle()
    assert audit.writes == 0


async def test_check_critical_exits_2_when_broker_unreachable(unreachable_config: Path) -> None:
    """check exits 2 (CRITICAL) within seconds when nothing listens."""
    run = await run_cli("check", config=unreachable_config)
    assert run.code == 2
    assert run.seconds < UNREACHABLE_DEADLINE
    assert run.stdout.startswith("JETSTREAM CRITICAL - broker unreachable: ")


async def test_check_critical_exits_2_without_jetstream(
    no_jetstream_server: NatsServer, tmp_path: Path
) -> None:
    """check exits 2 (CRITICAL) on a broker that has JetStream switched off."""
    run = await run_cli("check", config=config_for(no_jetstream_server.url, tmp_path))
    assert run.code == 2
    assert run.stdout.startswith("JETSTREAM CRITICAL - ")


async def test_check_unknown_exits_3_on_bad_config(bad_config: Path) -> None:
    """check exits 3 (UNKNOWN) when the config file is unusable."""
    run = await run_cli("check", config=bad_config)
    assert run.code == 3
    assert "streams.RESULTS.max_age" in run.stdout + run.stderr


async def test_check_unknown_prints_a_status_line_on_stdout(bad_config: Path) -> None:
    """check on a bad config prints its one 'JETSTREAM UNKNOWN - ...' status line
    on stdout, like every other check outcome (monitoring reads stdout)."""
    run = await run_cli("check", config=bad_config)
    assert run.code == 3
    assert run.stdout.startswith("JETSTREAM UNKNOWN - ")


# --- --json -----------------------------------------------------------------------------


def _assert_stable_shape(doc: dict[str, Any], *, apply: bool) -> None:
    assert set(doc) >= TOP_JSON_KEYS, sorted(doc)
    assert doc["format"] == 1
    assert isinstance(doc["in_sync"], bool)
    assert isinstance(doc["summary"], str)
    assert isinstance(doc["seconds"], float | int)
    assert isinstance(doc["requests"]["total"], int)
    assert len(doc["resources"]) == 25
    for res in doc["resources"]:
        assert set(res) >= RESOURCE_JSON_KEYS, sorted(res)
        assert res["kind"] in ("stream", "kv", "object_store")
        assert isinstance(res["changes"], list)
        assert isinstance(res["at_stake"], list)
        assert isinstance(res["reason"], str)
        if apply:
            assert {"result", "error"} <= set(res)
        for change in res["changes"]:
            assert {"field", "current", "desired"} <= set(change)


async def test_json_output_has_stable_keys_for_plan_and_apply(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """plan --json and apply --json print one JSON document with the stable keys
    (format 1, in_sync, summary, resources[kind,name,stream,action,changes,reason,
    at_stake], requests, seconds) for every kind of decision."""
    await _converge(repo_config)
    await raw_update(client, "RESULTS", max_age=1 * NS_PER_DAY)
    await raw_update(client, "OBJ_result_output", max_bytes=-1)

    plan = await run_cli("plan", "--json", config=repo_config)
    assert plan.code == 2
    doc = plan.json()
    _assert_stable_shape(doc, apply=False)
    assert doc["in_sync"] is False
    assert (doc["config"], doc["exit_code"], doc["error"]) == (str(repo_config), 2, "")
    by_stream = {r["stream"]: r for r in doc["resources"]}
    results = by_stream["RESULTS"]
    assert (results["kind"], results["name"], results["action"]) == ("stream", "RESULTS", "update")
    assert results["changes"] == [
        {
            "field": "max_age",
            "current": 1 * NS_PER_DAY,
            "desired": 30 * NS_PER_DAY,
            "current_text": "1d",
            "desired_text": "30d",
        }
    ]
    obj = by_stream["OBJ_result_output"]
    assert (obj["kind"], obj["name"], obj["action"]) == ("object_store", "result_output", "update")
    assert by_stream["KV_jobs"]["kind"] == "kv"
    assert by_stream["KV_jobs"]["action"] == "in_sync"

    applied = await run_cli("apply", "--json", config=repo_config)
    assert applied.code == 0
    adoc = applied.json()
    _assert_stable_shape(adoc, apply=True)
    assert adoc["in_sync"] is True
    assert (adoc["config"], adoc["exit_code"], adoc["error"]) == (str(repo_config), 0, "")
    assert adoc["requests"] == {"total": 3, "list": 1, "update": 2}
    assert adoc["summary"] == "2 updated, 23 in_sync"
