"""Helpers for the one-shot command tests: run the CLI, read raw stream info,
drift a stream behind the watchdog's back, and the values config.toml declares.

The expected values below are written out by hand rather than read through
`kanade_watchdog.config`, so a parsing or unit bug shows up as a difference.
Used by `test_apply_integration` and `test_cli_integration`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from tests import jsapi
from tests.audit import WATCHDOG_NAME as WATCHDOG_NAME  # noqa: PLC0414 - re-exported
from tests.audit import ApiAudit, audited
from tests.conftest import REPO
from tests.natsserver import NatsServer

CONFIG_ENV = "KANADE_WATCHDOG_CONFIG"

NS_PER_DAY = 86_400 * 10**9
MIB = 1024**2
GIB = 1024**3
TWO_MINUTES_NS = 120 * 10**9

# stream -> (subjects, max_age ns, max_bytes, discard, max_msgs_per_subject)
EXPECTED_STREAMS: dict[str, tuple[list[str], int, int, str, int]] = {
    "INVENTORY": (["inventory.>"], 90 * NS_PER_DAY, 1 * GIB, "old", -1),
    "RESULTS": (["results.>"], 30 * NS_PER_DAY, 2 * GIB, "old", -1),
    "EXEC": (["commands.>"], 7 * NS_PER_DAY, 64 * MIB, "old", 1),
    "EVENTS": (["events.>"], 7 * NS_PER_DAY, 256 * MIB, "old", -1),
    "AUDIT": (["audit.>"], 90 * NS_PER_DAY, 512 * MIB, "old", -1),
    "OBS_EVENTS": (["obs.>"], 90 * NS_PER_DAY, 512 * MIB, "old", -1),
    "NOTIFICATIONS": (["notifications.>"], 90 * NS_PER_DAY, 512 * MIB, "old", -1),
}
# bucket -> history
EXPECTED_KV: dict[str, int] = {
    "script_current": 5,
    "script_status": 5,
    "agents_state": 1,
    "agent_config": 1,
    "agent_groups": 1,
    "group_contacts": 5,
    "schedules": 5,
    "jobs": 5,
    "fleet_config": 1,
    "server_settings": 1,
    "notifications_read": 1,
    "jobs_yaml": 5,
    "schedules_yaml": 5,
}
# bucket -> (max_bytes, max_age ns)
EXPECTED_OBJ: dict[str, tuple[int, int]] = {
    "agent_releases": (-1, 0),
    "app_packages": (-1, 0),
    "scripts": (-1, 0),
    "result_output": (1 * GIB, 30 * NS_PER_DAY),
    "collections": (5 * GIB, 30 * NS_PER_DAY),
}
ALL_STREAMS: frozenset[str] = frozenset(
    [*EXPECTED_STREAMS, *(f"KV_{b}" for b in EXPECTED_KV), *(f"OBJ_{b}" for b in EXPECTED_OBJ)]
)

TOP_JSON_KEYS = frozenset(
    {
        "format",
        "config",
        "in_sync",
        "summary",
        "resources",
        "undeclared",
        "requests",
        "seconds",
        "error",
        "exit_code",
    }
)
RESOURCE_JSON_KEYS = frozenset(
    {"kind", "name", "stream", "action", "changes", "reason", "at_stake", "warnings"}
)


@dataclass(frozen=True)
class CliRun:
    """One finished `python -m kanade_watchdog ...` process."""

    code: int
    stdout: str
    stderr: str
    seconds: float  # wall time of the whole process, start-up included

    def json(self) -> dict[str, Any]:
        doc = json.loads(self.stdout)
        assert isinstance(doc, dict), self.stdout
        return doc

    def resources(self) -> dict[str, dict[str, Any]]:
        """The --json resources keyed by backing stream name."""
        return {str(r["stream"]): r for r in self.json()["resources"]}


async def run_cli(
    *args: str,
    config: Path | None,
    limit_seconds: float = 30.0,
    env: Mapping[str, str] | None = None,
    config_first: bool = False,
) -> CliRun:
    """Run the command line in a subprocess, as an operator or a unit would.

    `--config` goes after the command's arguments, or before the command with
    `config_first`, or nowhere with `config=None`. $KANADE_WATCHDOG_CONFIG is
    only set when `env` sets it. The event loop keeps running meanwhile
    (audit advisories keep arriving). No command may ever print a traceback,
    so that is checked on every run.
    """
    flag = [] if config is None else ["--config", str(config)]
    command = [*flag, *args] if config_first else [*args, *flag]
    full_env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    full_env.update(env or {})
    started = time.monotonic()
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "kanade_watchdog", *command],
        capture_output=True,
        text=True,
        timeout=limit_seconds,
        cwd=REPO,
        env=full_env,
        check=False,
    )
    run = CliRun(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
    assert "Traceback" not in run.stderr, run.stderr
    assert "Traceback" not in run.stdout, run.stdout
    return run


async def js_api(nc: Client, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """A raw JetStream API request; an error answer fails the test."""
    return await jsapi.ok(nc, subject, body)


async def stream_info(nc: Client, name: str) -> dict[str, Any]:
    """`$JS.API.STREAM.INFO.<name>` as the broker answers it (config, state)."""
    return await js_api(nc, f"$JS.API.STREAM.INFO.{name}")


async def stream_names(nc: Client) -> set[str]:
    answer = await js_api(nc, "$JS.API.STREAM.NAMES", {"offset": 0})
    return set(answer.get("streams") or [])


async def raw_create(nc: Client, config: dict[str, Any]) -> None:
    await js_api(nc, f"$JS.API.STREAM.CREATE.{config['name']}", config)


async def raw_update(nc: Client, name: str, **changes: Any) -> None:
    """Drift a stream the way an operator with the nats CLI would: the full
    current config with some fields changed (an update replaces it all)."""
    config = dict((await stream_info(nc, name))["config"])
    config.update(changes)
    await js_api(nc, f"$JS.API.STREAM.UPDATE.{name}", config)


def write_config(tmp_path: Path, server_url: str, body: str, name: str = "custom.toml") -> Path:
    """A small config of our own, pointed at the test broker."""
    path = tmp_path / name
    path.write_text(f'[nats]\nservers = ["{server_url}"]\nname = "{WATCHDOG_NAME}"\n\n{body}')
    return path


def watchdog_audit(nc: Client) -> AbstractAsyncContextManager[ApiAudit]:
    """An audit of the watchdog's own API calls that fails the test on any
    delete or purge it saw: the watchdog never destroys data."""
    return audited(nc, WATCHDOG_NAME)


async def new_audit(nc: Client) -> ApiAudit:
    """A fresh count for one phase of a test (after set-up)."""
    return await ApiAudit(nc, client_name=WATCHDOG_NAME).start()


def requests_for(audit: ApiAudit, stream: str) -> list[str]:
    """The request subjects the audit saw for one stream name."""
    return [s for s in audit.subjects if s.split(".")[-1] == stream]


class PlainNatsServer(NatsServer):
    """A nats-server with JetStream switched off."""

    def _write_conf(self) -> None:
        self.conf.write_text(f'server_name: "{self.name}"\nlisten: 127.0.0.1:{self.port}\n')
