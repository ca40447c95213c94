"""The Debian package under a real systemd: built by `make deb`, installed
with apt-get in a throwaway container, then upgraded, removed and purged.

Two builds of this checkout (`debs`): the version pyproject.toml names, and
the same tree with a higher version (KANADE_DEB_VERSION), for the upgrade.
One container (`box`) lives through the whole life cycle, so the tests run
in file order, each one step of it: install, enable and heal, reload, upgrade,
remove, purge. Each states the step it expects to start from.

The container is an overlay of this host's root, with no network: apt can
install the .deb only because its dependencies (python3, libc6, libsystemd0)
are installed here. The host image's policy-rc.d (a container-build
convention that forbids starting services) is removed inside, as a broker
host has none. nats-server runs as its own unit inside, and `probe.py` runs
with a copy of the package's own environment (it outlives the removal).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, REPO_CONFIG
from tests.e2e.conftest import PACKAGING, TIMINGS
from tests.e2e.machine import Machine, missing_requirement
from tests.helpers_streams import ALL_STREAMS
from tests.natsserver import server_binary

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PACKAGE = "kanade-watchdog"
UNIT = "kanade-watchdog.service"
CONFIG_PATH = "/etc/kanade/watchdog.toml"
VENV = "/opt/kanade-watchdog"
PROBE_VENV = "/opt/kwd-probe"
EXAMPLES = f"/usr/share/doc/{PACKAGE}/examples"
OPERATOR_SECRET = "/etc/kanade/nats-token"  # an operator's file beside the conffile
WANTS_LINK = f"/etc/systemd/system/multi-user.target.wants/{UNIT}"
POLL = 0.05


@dataclass(frozen=True)
class Debs:
    first: Path
    second: Path
    version: str
    upgrade_version: str


def debian_version(pep440: str) -> str:
    """pyproject's version as packaging/deb/build writes it into the changelog."""
    version = re.sub(r"\.?(a|b|rc|dev)(\d*)", r"~\1\2", pep440)
    return version.replace(".post", "+post")


def make_deb(out: Path, **env: str) -> float:
    """`make deb` into `out`; returns seconds."""
    started = time.monotonic()
    proc = subprocess.run(
        ["make", "-s", "-C", str(REPO), "deb", f"DEB_OUT={out}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=540,
        env={**_clean_env(), **env},
    )
    assert proc.returncode == 0, f"make deb failed:\n{proc.stdout}{proc.stderr}"
    return time.monotonic() - started


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KANADE_DEB_")}


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Debs:
    """This checkout built by `make deb` twice: as pyproject.toml versions it,
    and with a higher version for the upgrade."""
    reason = missing_requirement()
    if reason:
        pytest.skip(reason)
    with open(REPO / "pyproject.toml", "rb") as fh:
        version = debian_version(tomllib.load(fh)["project"]["version"])
    upgrade_version = f"{version}+e2e1"
    out = tmp_path_factory.mktemp("debs")
    out.chmod(0o755)
    TIMINGS["deb: make deb (build + lintian)"] = make_deb(out)
    # The upgrade's build is the same tree; lintian already judged it.
    TIMINGS["deb: second build, higher version"] = make_deb(
        out, KANADE_DEB_VERSION=upgrade_version, KANADE_DEB_LINTIAN="0"
    )
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    first = out / f"{PACKAGE}_{version}_{arch}.deb"
    second = out / f"{PACKAGE}_{upgrade_version}_{arch}.deb"
    assert first.is_file(), sorted(out.iterdir())
    assert second.is_file(), sorted(out.iterdir())
    TIMINGS["deb: package size (KiB)"] = first.stat().st_size / 1024
    return Debs(first=first, second=second, version=version, upgrade_version=upgrade_version)


@pytest.fixture(scope="module")
def box(debs: Debs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    """A booted container with a broker unit and the two .debs reachable."""
    workdir = tmp_path_factory.mktemp("deb-e2e")
    workdir.chmod(0o755)
    shutil.copy(server_binary(), workdir / "nats-server")
    (workdir / "nats-server").chmod(0o755)
    (workdir / "probe.py").write_text((REPO / "tests" / "e2e" / "probe.py").read_text())
    m = Machine(workdir=workdir, binds=[(debs.first.parent, str(debs.first.parent))])
    try:
        TIMINGS["deb: container boot"] = m.boot()
        m.run("rm", "-f", "/usr/sbin/policy-rc.d")
        m.write(
            "/etc/systemd/system/nats-server.service",
            "[Unit]\nDescription=NATS server (end-to-end test broker)\n\n"
            "[Service]\nType=exec\n"
            f"ExecStart={workdir}/nats-server -js -a 127.0.0.1 -p 4222 -n deb-e2e "
            f"-sd {workdir}/store\n",
        )
        m.systemctl("daemon-reload")
        yield m
    finally:
        TIMINGS["deb: container halt"] = m.halt()


# --- helpers ---------------------------------------------------------------------------


def apt(m: Machine, *args: str) -> float:
    """apt-get inside, non-interactive; returns seconds. The container has no
    network: everything the .deb depends on must already be installed (apt's
    --no-download would say so sooner, but it cannot install a local .deb)."""
    started = time.monotonic()
    m.run(
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "-y",
        "-q",
        "-o",
        "Dpkg::Use-Pty=0",
        *args,
        within=180,
    )
    return time.monotonic() - started


def poll(what: str, check: Callable[[], Any], within: float, m: Machine) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            status = m.systemctl("status", UNIT, "nats-server.service", check=False).stdout
            log = m.run("journalctl", "--no-pager", "-n", "60", check=False).stdout
            raise AssertionError(f"no {what} within {within}s\n{status}\n{log}")
        time.sleep(POLL)


def state(m: Machine) -> dict[str, str]:
    return m.show(UNIT, "ActiveState", "SubState", "StatusText", "MainPID", "UnitFileState")


def streams(m: Machine) -> set[str]:
    out = m.run(f"{PROBE_VENV}/bin/python", f"{m.workdir}/probe.py", "list").stdout
    return set(json.loads(out))


def installed_version(m: Machine) -> str:
    out = m.run("dpkg-query", "-W", "-f=${db:Status-Abbrev}${Version}", PACKAGE, check=False)
    status, _, version = out.stdout.partition(" ")
    return version.strip() if status.startswith("ii") else ""


def exists(m: Machine, path: str) -> bool:
    return m.run("test", "-e", path, check=False).returncode == 0


def read(m: Machine, path: str) -> str:
    return m.run("cat", path).stdout


# --- the life cycle, in order ----------------------------------------------------------


def test_apt_installs_the_program_unit_and_conffile_and_starts_nothing(
    box: Machine, debs: Debs
) -> None:
    """`apt-get install ./….deb` with no network: `kanade-watchdog` is on PATH and
    validates the shipped /etc/kanade/watchdog.toml (a conffile), the unit is the
    shipped one in the system unit directory, the backend drop-in is an example,
    and nothing is enabled or started before the operator has edited the file."""
    m = box
    assert installed_version(m) == ""
    TIMINGS["deb: apt-get install (in container)"] = apt(m, "install", str(debs.first))
    assert installed_version(m) == debs.version
    assert (
        m.run("sh", "-c", "command -v kanade-watchdog").stdout.strip() == "/usr/bin/kanade-watchdog"
    )
    # The README's command, with the default path.
    validated = m.run("kanade-watchdog", "validate").stdout
    assert validated.startswith(f"{CONFIG_PATH}: OK"), validated
    conffiles = m.run("dpkg-query", "-W", "-f=${Conffiles}", PACKAGE).stdout
    assert CONFIG_PATH in conffiles.split()
    assert read(m, CONFIG_PATH) == REPO_CONFIG.read_text()
    assert m.run("stat", "-c", "%a", CONFIG_PATH).stdout.strip() == "644"

    fragment = m.show(UNIT, "FragmentPath")["FragmentPath"]
    assert fragment.endswith("/lib/systemd/system/kanade-watchdog.service"), fragment
    assert read(m, fragment) == (PACKAGING / "kanade-watchdog.service").read_text()
    [exec_start] = re.findall(r"^ExecStart=(\S+)", read(m, fragment), re.M)
    assert exists(m, exec_start), exec_start
    dropin = PACKAGING / "kanade-backend.service.d" / "10-after-watchdog.conf"
    example = f"{EXAMPLES}/kanade-backend.service.d/{dropin.name}"
    assert read(m, example) == dropin.read_text()

    assert state(m)["ActiveState"] == "inactive"
    assert state(m)["UnitFileState"] == "disabled"
    # Compiled by postinst: the sandboxed service cannot write .pyc itself.
    caches = m.run("find", VENV, "-name", "*.pyc", "-path", "*kanade_watchdog*").stdout
    assert caches.strip(), "no .pyc for the program"
    # Depends: the interpreter and what the compiled extension links, no more.
    depends = m.run("dpkg-query", "-W", "-f=${Depends}", PACKAGE).stdout
    names = {d.strip().split()[0] for d in depends.split(",")}
    assert names == {"libc6", "libsystemd0", "python3"}, depends
    # Bound to the build's Python X.Y, which requires-python puts at 3.11 or later.
    bounds = re.search(r"python3 \(>= 3\.(\d+)~\), python3 \(<< 3\.(\d+)\)", depends)
    assert bounds, depends
    assert int(bounds.group(1)) >= 11
    assert int(bounds.group(2)) == int(bounds.group(1)) + 1
    # The probe's own copy of the environment, so it outlives `apt-get remove`.
    m.run("cp", "-a", VENV, PROBE_VENV)


def test_enable_now_goes_active_once_the_resources_exist_and_heals_a_delete(
    box: Machine,
) -> None:
    """The README's path: `systemctl enable --now` returns once every declared
    resource exists (the unit is then active), a stream deleted from outside
    is re-created, and `journalctl -u kanade-watchdog` says so."""
    m = box
    assert installed_version(m)
    m.systemctl("start", "nats-server.service")
    started = time.monotonic()
    m.systemctl("enable", "--now", UNIT)
    TIMINGS["deb: enable --now -> active"] = time.monotonic() - started
    after = state(m)
    assert (after["ActiveState"], after["UnitFileState"]) == ("active", "enabled")
    assert re.match(r"(\d+)/\1 in sync", after["StatusText"]), after
    assert streams(m) >= ALL_STREAMS

    m.run(f"{PROBE_VENV}/bin/python", f"{m.workdir}/probe.py", "delete", "RESULTS")
    poll("RESULTS re-created", lambda: "RESULTS" in streams(m), 30, m)
    journal = poll(
        "the heal in the journal",
        lambda: (
            (out := m.run("journalctl", "--no-pager", "-u", "kanade-watchdog").stdout)
            and "created stream RESULTS" in out
            and out
        ),
        10,
        m,
    )
    assert "created stream RESULTS (trigger advisory)" in journal


def test_reload_applies_an_edit_of_the_conffile(box: Machine) -> None:
    """An edited /etc/kanade/watchdog.toml, validated, then `systemctl reload`:
    the new stream is created by the same process."""
    m = box
    before = state(m)
    assert before["ActiveState"] == "active"
    m.run("sh", "-c", f"printf '\\n[streams.ADDED]\\nsubjects = [\"added.>\"]\\n' >> {CONFIG_PATH}")
    m.run("kanade-watchdog", "validate", "--config", CONFIG_PATH)
    m.systemctl("reload", UNIT)
    poll("ADDED created", lambda: "ADDED" in streams(m), 30, m)
    after = poll(
        "active after reload", lambda: (s := state(m))["ActiveState"] == "active" and s, 30, m
    )
    assert after["MainPID"] == before["MainPID"]


def test_upgrade_keeps_the_edited_conffile_and_restarts_the_service(
    box: Machine, debs: Debs
) -> None:
    """Installing the higher build over it keeps the operator's edit byte for byte
    (no prompt, no .dpkg-dist) and restarts the running service, which comes
    back active on the edited file."""
    m = box
    edited = read(m, CONFIG_PATH)
    assert "[streams.ADDED]" in edited
    before = state(m)
    assert before["ActiveState"] == "active"
    TIMINGS["deb: apt-get install of the upgrade"] = apt(m, "install", str(debs.second))
    assert installed_version(m) == debs.upgrade_version
    assert read(m, CONFIG_PATH) == edited
    assert not exists(m, f"{CONFIG_PATH}.dpkg-dist")
    assert not exists(m, f"{CONFIG_PATH}.dpkg-new")
    after = poll(
        "active after the upgrade", lambda: (s := state(m))["ActiveState"] == "active" and s, 60, m
    )
    assert after["MainPID"] != before["MainPID"]
    assert after["UnitFileState"] == "enabled"
    assert {"ADDED", *ALL_STREAMS} <= streams(m)


def test_remove_stops_the_service_and_leaves_every_stream(box: Machine) -> None:
    """`apt-get remove` stops the service (gracefully: it logs 'stopping') and
    removes the program entirely, /opt included; every stream on the broker,
    bucket streams included, is still there, and the conffile stays."""
    m = box
    before = state(m)
    assert before["ActiveState"] == "active"
    on_broker = streams(m)
    assert {"ADDED", *ALL_STREAMS} <= on_broker
    cursor = m.cursor()
    TIMINGS["deb: apt-get remove"] = apt(m, "remove", PACKAGE)
    assert installed_version(m) == ""
    assert m.show(UNIT, "ActiveState")["ActiveState"] == "inactive"
    assert not exists(m, f"/proc/{before['MainPID']}")
    # Filtered here, not by journalctl: see entries() in test_systemd_e2e.py.
    stopping = [
        e for e in m.journal(f"--after-cursor={cursor}") if e.get("KANADE_ACTION") == "stopping"
    ]
    assert stopping, "the daemon did not log its own stop"
    assert not exists(m, "/usr/bin/kanade-watchdog")
    assert not exists(m, VENV)
    assert streams(m) == on_broker
    assert "[streams.ADDED]" in read(m, CONFIG_PATH)


def test_purge_removes_the_conffile_only(box: Machine) -> None:
    """`apt-get purge` deletes the conffile (and the unit's enablement links) but
    not an operator's own file in /etc/kanade, and touches no stream."""
    m = box
    assert exists(m, CONFIG_PATH)
    m.write(OPERATOR_SECRET, "s3cr3t\n", mode="0600")
    on_broker = streams(m)
    apt(m, "purge", PACKAGE)
    assert not exists(m, CONFIG_PATH)
    assert read(m, OPERATOR_SECRET) == "s3cr3t\n"
    assert not exists(m, WANTS_LINK)
    status = m.run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", PACKAGE, check=False).stdout
    assert not status.strip() or status.startswith("un"), status
    assert streams(m) == on_broker
