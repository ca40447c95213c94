"""What the one-shot commands import: `plan` and `check` start often (a
monitoring plugin runs `check` every few minutes), so they must not load
what only the daemon or `export` uses. Each case runs the real command in a
fresh interpreter against a real nats-server, then lists `sys.modules`.
Speed itself is measured by bench/oneshot_startup.py, never asserted here.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, config_for
from tests.natsserver import NatsServer

# Loaded by the daemon (scheduler, metrics, systemd's journal and notify, the
# connect retries' tenacity) or by `export` (tomlkit); none of them may reach
# a one-shot's import path.
DAEMON_OR_EXPORT = ("tomlkit", "prometheus_client", "apscheduler", "systemd", "tenacity")
# Our own modules a plan or a check does not use: the exporter (plan needs
# only `core.undeclared`) and the daemon's never-give-up connect.
UNUSED_OURS = (
    "kanade_watchdog.daemon",
    "kanade_watchdog.commands.export",
    "kanade_watchdog.core.export",
    "kanade_watchdog.broker.forever",
    "kanade_watchdog.report.logs",
    "kanade_watchdog.report.declaration",
    "kanade_watchdog.report.metrics",
)
# Not on `plan`'s path either: `check`'s report and its cluster facts, what
# `apply` did (`core.outcome`), and the consumers' modules when the file
# declares no consumer (config_for declares none).
NOT_FOR_PLAN = (
    "kanade_watchdog.commands.check",
    "kanade_watchdog.core.outcome",
    "kanade_watchdog.report.check",
    "kanade_watchdog.core.cluster",
    "kanade_watchdog.broker.consumers",
    "kanade_watchdog.core.consumer_plan",
    "kanade_watchdog.report.consumers",
)
# The standard library's costlier modules nothing on a valid file's path
# needs: difflib only suggests a name for an unknown key, and sizes and
# durations are parsed with integers, not fractions (which brings decimal).
UNUSED_STDLIB = ("difflib", "fractions", "decimal")

PROBE = """\
import contextlib, io, json, sys
from kanade_watchdog import cli
with contextlib.redirect_stdout(io.StringIO()):
    code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def loaded_by(*argv: str) -> tuple[int, set[str]]:
    """Run the command line in a fresh interpreter: its exit code and every
    module it had imported by the end."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    return doc["code"], set(doc["modules"])


def _packages(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{name}." for name in names)


def _top(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.mark.parametrize(("command", "code"), [("plan", 2), ("check", 2), ("validate", 0)])
async def test_one_shot_commands_do_not_import_daemon_or_export_modules(
    server: NatsServer, tmp_path: Path, command: str, code: int
) -> None:
    """plan, check and validate (here on an empty broker: plan and check exit 2)
    run their whole path without importing tomlkit, prometheus_client,
    apscheduler, systemd, tenacity, the daemon, the exporter or the stdlib
    modules a valid file does not need."""
    config = config_for(server.url, tmp_path)
    exit_code, modules = await asyncio.to_thread(loaded_by, command, "--config", str(config))
    assert exit_code == code
    assert "kanade_watchdog.core.plan" in modules  # the probe did see the command's path
    assert _top(modules) & set(DAEMON_OR_EXPORT) == set()
    assert _top(modules) & set(UNUSED_STDLIB) == set()
    if command != "check":
        assert modules & set(NOT_FOR_PLAN) == set()
    else:
        assert "kanade_watchdog.report.check" in modules
    assert {m for m in modules if m in UNUSED_OURS or m.startswith(_packages(UNUSED_OURS))} == set()


async def test_the_probe_sees_what_export_imports(server: NatsServer, tmp_path: Path) -> None:
    """The same probe on `export`, which does load tomlkit: the check above
    can fail."""
    config = config_for(server.url, tmp_path)
    exit_code, modules = await asyncio.to_thread(loaded_by, "export", "--config", str(config))
    assert exit_code == 0
    assert "tomlkit" in modules
    assert "kanade_watchdog.commands.export" in modules
