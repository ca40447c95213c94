"""What the one-shot commands print, as an operator, a script or a monitoring
system meets it: the file they read, JSON even when they fail, output that
cannot be written, and text from the broker that tries to forge lines.

Every command runs in a real subprocess against a real nats-server
(`helpers_streams.run_cli`), except for the pure formatter test at the end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from kanade_watchdog.report.logs import TextFormatter
from tests.conftest import REPO, config_for
from tests.daemonproc import daemon_config
from tests.helpers_streams import (
    ALL_STREAMS,
    CONFIG_ENV,
    raw_create,
    raw_update,
    run_cli,
    stream_info,
    stream_names,
    write_config,
)
from tests.natsserver import NatsServer, free_port

# A metadata key and value a client wrote to forge a log line of its own.
FORGED = "\n2026-01-01 INFO created stream FORGED"
FORGED_LINE = re.compile(r"^2026-01-01 INFO created stream FORGED", re.M)
ESCAPED = "\\n2026-01-01 INFO created stream FORGED"


@pytest.fixture
def repo_config(server: NatsServer, tmp_path: Path) -> Path:
    return config_for(server.url, tmp_path)


def _plus_one_stream(config: Path) -> Path:
    """The same file declaring one more stream (26 resources)."""
    other = config.with_name("other.toml")
    other.write_text(config.read_text() + '\n[streams.EXTRA]\nsubjects = ["extra.>"]\n')
    return other


# --- which file: --config before or after the command, and the environment -----------------


@pytest.mark.parametrize("first", [True, False], ids=["before-command", "after-command"])
async def test_config_flag_wins_over_the_environment_in_either_position(
    first: bool, repo_config: Path, client: Client
) -> None:
    """`--config A`, before or after the command, is the file plan, apply and check
    read although $KANADE_WATCHDOG_CONFIG names B (one stream more); every
    output names A, and the broker ends with A's 25 streams, not B's 26."""
    other = _plus_one_stream(repo_config)
    env = {CONFIG_ENV: str(other)}

    plan = await run_cli("plan", "--json", config=repo_config, env=env, config_first=first)
    assert plan.code == 2, plan.stderr
    assert plan.json()["config"] == str(repo_config)
    assert len(plan.json()["resources"]) == 25
    text = await run_cli("plan", config=repo_config, env=env, config_first=first)
    assert text.stdout.splitlines()[-1] == f"0/25 in sync; 25 create (config {repo_config})"

    applied = await run_cli("apply", config=repo_config, env=env, config_first=first)
    assert applied.code == 0, applied.stdout + applied.stderr
    last = applied.stdout.splitlines()[-1]
    assert last.startswith("25 created ("), last
    assert last.endswith(f"; config {repo_config})"), last
    assert await stream_names(client) == ALL_STREAMS

    again = await run_cli("apply", "--json", config=repo_config, env=env, config_first=first)
    assert (again.code, again.json()["config"]) == (0, str(repo_config))
    assert again.json()["summary"] == "25 in_sync"

    check = await run_cli("check", "--json", config=repo_config, env=env, config_first=first)
    assert check.code == 0, check.stdout
    doc = check.json()
    assert (doc["config"], doc["status"], doc["perfdata"]["resources"]) == (
        str(repo_config),
        "OK",
        25,
    )


async def test_environment_names_the_file_when_no_flag_does(repo_config: Path) -> None:
    """Without --config, $KANADE_WATCHDOG_CONFIG is the file read and named."""
    other = _plus_one_stream(repo_config)
    run = await run_cli("plan", "--json", config=None, env={CONFIG_ENV: str(other)})
    assert run.code == 2
    assert run.json()["config"] == str(other)
    assert len(run.json()["resources"]) == 26


async def test_default_path_is_named_when_nothing_else_is(tmp_path: Path) -> None:
    """Without --config and without the variable, the system path is the one named."""
    run = await run_cli("validate", "--json", config=None)
    assert run.json()["config"] == "/etc/kanade/watchdog.toml"


def _relative_to_repo(path: Path) -> Path:
    """`path` relative to the directory run_cli runs the command in."""
    return Path(os.path.relpath(path, REPO))


async def test_a_relative_config_path_is_named_in_full(repo_config: Path) -> None:
    """A relative --config is resolved against the working directory and named
    absolutely, so the output says which file it was wherever it is read."""
    run = await run_cli("validate", "--json", config=_relative_to_repo(repo_config))
    assert run.code == 0, run.stderr
    doc = run.json()
    assert doc["config"] == str(repo_config)
    assert len(doc["resources"]) == 25
    assert doc["resources"][0] == {"kind": "stream", "name": "INVENTORY", "stream": "INVENTORY"}


# --- --json when the command fails ----------------------------------------------------------


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[streams.RESULTS]\nsubjects = ["results.>"]\nmax_age = "thirty days"\nmax_bytes = "lots"\n'
    )
    return path


@pytest.mark.parametrize("command", ["validate", "plan", "apply"])
async def test_json_failure_on_a_bad_config_is_a_json_document(
    command: str, bad_config: Path
) -> None:
    """validate/plan/apply --json on a bad config exit 78 and print a JSON object
    with every problem, the first as `error`, and the exit code."""
    run = await run_cli(command, "--json", config=bad_config)
    assert run.code == 78
    doc = run.json()
    assert doc["exit_code"] == 78
    assert doc["config"] == str(bad_config)
    assert doc["error"].startswith(f"config error: {bad_config}: streams.RESULTS.max_age: ")
    assert len(doc["problems"]) == 2
    assert doc["problems"] == run.stderr.splitlines()


async def test_check_json_on_a_bad_config_is_unknown(bad_config: Path) -> None:
    """check --json on a bad config: UNKNOWN, exit 3, the problem in the document."""
    run = await run_cli("check", "--json", config=bad_config)
    assert run.code == 3
    doc = run.json()
    assert (doc["status"], doc["exit_code"]) == ("UNKNOWN", 3)
    assert doc["error"].startswith("config error: ")
    assert doc["text"] == doc["error"]


async def test_check_json_on_an_unreachable_broker_is_critical(tmp_path: Path) -> None:
    """check --json with nothing listening: CRITICAL, exit 2, why in `error`."""
    config = config_for(f"nats://127.0.0.1:{free_port()}", tmp_path)
    run = await run_cli("check", "--json", config=config)
    assert run.code == 2
    doc = run.json()
    assert (doc["status"], doc["exit_code"]) == ("CRITICAL", 2)
    assert doc["error"].startswith("broker unreachable: cannot connect to nats://127.0.0.1:")


async def test_check_json_says_what_the_status_line_says(repo_config: Path, client: Client) -> None:
    """check --json carries the same facts as the plugin line: status, text, the
    names per group and the perfdata counts."""
    await run_cli("apply", config=repo_config)
    await raw_update(client, "RESULTS", max_age=10**9 * 3600)
    line = await run_cli("check", config=repo_config)
    run = await run_cli("check", "--json", config=repo_config)
    assert line.code == run.code == 1
    doc = run.json()
    assert line.stdout.startswith(f"JETSTREAM {doc['status']} - {doc['text']} | ")
    assert doc["drifted"] == ["RESULTS"]
    assert doc["missing"] == doc["blocked"] == []
    perf = dict(pair.split("=") for pair in line.stdout.split(" | ")[1].split())
    assert {k: str(v) for k, v in doc["perfdata"].items() if k != "time"} == {
        k: v for k, v in perf.items() if k != "time"
    }


# --- check words each broker problem as what it is ----------------------------------------

DENIED_CONF = """
authorization {
  users = [
    { user: "watchdog", password: "pw-not-secret",
      permissions: { publish: { allow: [">"], deny: ["$JS.API.STREAM.LIST"] },
                     subscribe: { allow: [">"] } } }
  ]
}
"""


@pytest.fixture
def denied_server(tmp_path: Path) -> Iterator[NatsServer]:
    srv = NatsServer(tmp_path, name="denied", extra_conf=DENIED_CONF).start()
    yield srv
    srv.stop()


async def test_check_words_a_permission_error_as_permission_denied(
    denied_server: NatsServer, tmp_path: Path
) -> None:
    """A user the broker denies the stream list is CRITICAL 'permission denied'
    naming the subject, not 'broker unreachable'."""
    config = write_config(
        tmp_path,
        denied_server.url,
        'user = "watchdog"\npassword = "pw-not-secret"\nrequest_timeout = "500ms"\n\n'
        '[streams.ORDERS]\nsubjects = ["orders.>"]\n',
    )
    config.chmod(0o600)
    run = await run_cli("check", config=config)
    assert run.code == 2, run.stdout + run.stderr
    assert run.stdout.startswith(
        "JETSTREAM CRITICAL - permission denied: publish to $JS.API.STREAM.LIST"
    ), run.stdout
    assert "unreachable" not in run.stdout
    doc = (await run_cli("check", "--json", config=config)).json()
    assert doc["error"].startswith("permission denied: publish to $JS.API.STREAM.LIST")


# --- output that cannot be written ----------------------------------------------------------


def _run_into(stdout: int, *args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kanade_watchdog", *args, "--config", str(config)],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )


COMMANDS = [("validate",), ("plan", "-v"), ("plan", "--json"), ("apply",), ("check",)]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
async def test_a_reader_that_went_away_ends_the_command_quietly(
    args: tuple[str, ...], repo_config: Path
) -> None:
    """Output into a pipe nobody reads any more exits 141 (as a tool killed by
    SIGPIPE would) with nothing on stderr: no 'internal error', no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = await asyncio.to_thread(_run_into, write_end, *args, config=repo_config)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (141, "")


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
async def test_a_full_device_is_one_line_and_exit_74(
    args: tuple[str, ...], repo_config: Path
) -> None:
    """Output into /dev/full: one line on stderr saying so, exit 74 (EX_IOERR)."""
    with open("/dev/full", "w") as full:  # noqa: ASYNC230 - a device, never blocks
        proc = await asyncio.to_thread(_run_into, full.fileno(), *args, config=repo_config)
    assert (proc.returncode, proc.stderr) == (
        74,
        "cannot write output: No space left on device\n",
    )


async def test_piping_into_head_is_quiet(repo_config: Path) -> None:
    """`plan -v | head -n 0` in a shell: plan exits 141 and says nothing."""
    script = (
        f"set -o pipefail; {sys.executable} -m kanade_watchdog plan -v "
        f"--config {repo_config} | head -n 0; echo $? >&2"
    )
    proc = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )
    assert proc.stderr == "141\n"


# --- text from the broker cannot forge lines ------------------------------------------------

ORDERS = '[streams.ORDERS]\nsubjects = ["orders.>"]\nmetadata = { owner = "ops" }\n'


async def _forge(client: Client) -> None:
    """A client writes a newline and a whole log line into ORDERS' metadata."""
    config = (await stream_info(client, "ORDERS"))["config"]
    metadata = {**config["metadata"], "owner": "x" + FORGED, "k" + FORGED: "v"}
    await raw_update(client, "ORDERS", metadata=metadata)


def _one_line_each(text: str) -> None:
    assert not FORGED_LINE.search(text), text
    assert all(line.isprintable() for line in text.splitlines()), text


async def test_forged_metadata_is_escaped_in_plan_and_apply(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """Metadata keys and values with a newline and a fake log line print escaped,
    on the one diff line they belong to, in plan and apply; --json carries
    them unchanged as JSON strings."""
    config = write_config(tmp_path, server.url, ORDERS)
    assert (await run_cli("apply", config=config)).code == 0
    await _forge(client)

    plan = await run_cli("plan", config=config)
    assert plan.code == 2
    _one_line_each(plan.stdout)
    (diff,) = [line for line in plan.stdout.splitlines() if line.startswith("    metadata: ")]
    assert f'"k{ESCAPED}"="v"' in diff
    assert f'owner="x{ESCAPED}"' in diff

    doc = (await run_cli("plan", "--json", config=config)).json()
    (change,) = doc["resources"][0]["changes"]
    assert ["k" + FORGED, "v"] in change["current"]

    applied = await run_cli("apply", config=config)
    assert applied.code == 0
    _one_line_each(applied.stdout)
    assert applied.stdout.startswith("stream ORDERS: updated (metadata: {")
    assert ESCAPED in applied.stdout.splitlines()[0]


def _log_has(log: Path, fragment: str, *, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while fragment not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)


def _text_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`run` logging text to the file `log`, outside systemd."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    argv = [sys.executable, "-m", "kanade_watchdog", "run", "--config", str(config)]
    with log.open("w") as sink:
        return subprocess.Popen(
            [*argv, "--log-format", "text", "--log-level", "info"],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )


async def test_forged_metadata_is_escaped_in_the_daemon_text_log(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """The daemon's text log shows the forged metadata it reverts escaped inside
    its one 'updated' line; no forged line appears."""
    config = daemon_config(tmp_path / "daemon.toml", server.url, resources=ORDERS)
    log = tmp_path / "daemon.log"
    proc = _text_daemon(config, log)
    try:
        await asyncio.to_thread(_log_has, log, "created stream ORDERS")
        await _forge(client)
        await asyncio.to_thread(_log_has, log, "updated stream ORDERS")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 20)
    assert code == 0
    text = log.read_text()
    _one_line_each(text)
    (updated,) = [line for line in text.splitlines() if "updated stream ORDERS" in line]
    assert ESCAPED in updated


def test_text_log_formatter_keeps_one_record_on_one_line() -> None:
    """Whatever a message carries (a newline, a terminal escape), the text log
    formatter prints one line."""
    record = logging.LogRecord(
        "kanade_watchdog", logging.INFO, __file__, 1, "updated %s", ("a\nb\x1b[2J",), None
    )
    line = TextFormatter().format(record)
    assert "\n" not in line
    assert line.endswith("INFO    updated a\\nb\\x1b[2J")


# --- apply tells what happened -------------------------------------------------------------


async def _publish(client: Client, subject: str, n: int) -> None:
    js = client.jetstream()
    for i in range(n):
        await js.publish(subject, str(i).encode())


@pytest.mark.parametrize(
    "case",
    [
        ("old", "    WARNING data discarded: 6 of 10 messages were over the new max_msgs 4", 4),
        (
            "new",
            "    WARNING new writes are now refused: 6 of 10 messages are over the new max_msgs 4",
            10,
        ),
    ],
    ids=["discard-old", "discard-new"],
)
async def test_apply_says_what_the_update_did_to_stored_data(
    case: tuple[str, str, int], server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """After apply lowers max_msgs on 10 stored messages, its warning tells what
    the broker did: discard old discarded 6 (said in the past tense), discard
    new kept them all (said as refused writes, not as lost data)."""
    discard, line, kept = case
    await raw_create(
        client, {"name": "LOGS", "subjects": ["logs.>"], "discard": discard, "max_msgs": 10}
    )
    await _publish(client, "logs.a", 10)
    body = f'[streams.LOGS]\nsubjects = ["logs.>"]\ndiscard = "{discard}"\nmax_msgs = 4\n'
    config = write_config(tmp_path, server.url, body)

    run = await run_cli("apply", config=config)
    assert run.code == 0, run.stdout + run.stderr
    assert line in run.stdout.splitlines(), run.stdout
    assert "would" not in run.stdout
    info: dict[str, Any] = await stream_info(client, "LOGS")
    assert info["state"]["messages"] == kept
