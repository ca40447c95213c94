"""Fixtures for the end-to-end tests: one container per module, booted from
the host's own root, with the SHIPPED unit file installed as is.

The venv is bind-mounted at the path the shipped unit names
(/opt/kanade-watchdog), so the unit needs no path changes and gets no
drop-in. nats-server runs
as its own unit inside (the container has only `lo`), with its store in a
bound host directory. A stand-in kanade backend carries the shipped drop-in.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, REPO_CONFIG
from tests.e2e.machine import (
    INSTALL_PATH,
    Machine,
    Runtime,
    build_runtime,
    missing_requirement,
    session_dir,
)
from tests.natsserver import server_binary

PACKAGING = REPO / "packaging" / "systemd"
UNIT_DIR = "/etc/systemd/system"
CONFIG_PATH = "/etc/kanade/watchdog.toml"
TIMINGS: dict[str, float] = {}


def e2e_config(extra: str = "") -> str:
    """The repo's config.toml with a wedge limit of 3 s (pass_deadline 2 s +
    request_timeout 1 s), so a wedged pass stops the pings soon."""
    text = REPO_CONFIG.read_text()
    assert 'request_timeout = "2s"' in text
    assert "\n[watchdog]\n" in text
    text = text.replace('request_timeout = "2s"', 'request_timeout = "1s"')
    text = text.replace("\n[watchdog]\n", '\n[watchdog]\npass_deadline = "2s"\n', 1)
    return text + extra


@pytest.fixture(scope="session")
def runtime() -> Iterator[Runtime]:
    """The venv and broker binary the containers run, in a directory of this
    session's own under /opt, removed when the session ends."""
    reason = missing_requirement()
    if reason:
        pytest.skip(reason)
    with session_dir() as base:
        rt = build_runtime(REPO, Path(server_binary()), base)
        TIMINGS["runtime: venv + package install"] = rt.build_seconds
        yield rt


@pytest.fixture(scope="module")
def machine(runtime: Runtime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    """A booted container with the units installed; halted at the end, always."""
    workdir = tmp_path_factory.mktemp("e2e")
    workdir.chmod(0o755)
    m = Machine(workdir=workdir, binds=[(runtime.venv, INSTALL_PATH)])
    try:
        TIMINGS["container boot"] = m.boot()
        (workdir / "probe.py").write_text((REPO / "tests" / "e2e" / "probe.py").read_text())
        m.write(
            f"{UNIT_DIR}/nats-server.service",
            "[Unit]\nDescription=NATS server (end-to-end test broker)\n\n"
            "[Service]\nType=exec\n"
            f"ExecStart={runtime.nats_server} -js -a 127.0.0.1 -p 4222 -n e2e "
            f"-sd {workdir}/store\n",
        )
        m.write(
            f"{UNIT_DIR}/kanade-watchdog.service",
            (PACKAGING / "kanade-watchdog.service").read_text(),
        )
        m.write(
            f"{UNIT_DIR}/kanade-backend.service",
            "[Unit]\nDescription=kanade backend (stand-in)\n\n"
            "[Service]\nType=exec\nExecStart=/bin/sleep infinity\n",
        )
        dropin = PACKAGING / "kanade-backend.service.d" / "10-after-watchdog.conf"
        m.write(f"{UNIT_DIR}/kanade-backend.service.d/{dropin.name}", dropin.read_text())
        m.systemctl("daemon-reload")
        yield m
    finally:
        TIMINGS["container halt"] = m.halt()


@pytest.fixture
def fresh(machine: Machine) -> str:
    """Everything stopped, an empty broker store, the default config; returns a
    journal cursor so the test reads only its own entries."""
    m = machine
    m.systemctl("stop", "kanade-backend", "kanade-watchdog", "nats-server", check=False)
    m.systemctl("reset-failed", check=False)
    m.run("rm", "-rf", f"{m.workdir}/store")
    m.write(CONFIG_PATH, e2e_config())
    return m.cursor()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.write_sep("-", "end-to-end timings under systemd (seconds)")
        for what, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{what:<48} {seconds:7.2f}")
