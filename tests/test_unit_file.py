"""The shipped unit files, checked offline by systemd's own tools: `verify`
prints nothing at all (an unknown key only warns, so any output fails), the
sandbox keeps `security` exposure at or under 1.5, and the unit states the
contract the daemon implements (notify, watchdog, reload, exit 78).

`verify` runs against a scratch root holding the distribution's units, the
shipped files and stub executables at the paths the unit names, so the
shipped file is checked as written.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kanade_watchdog.config.values import DEFAULT_LISTEN
from kanade_watchdog.model import exitcodes
from kanade_watchdog.model.settings import DEFAULT_PATH, WatchdogSettings
from tests.conftest import REPO

PACKAGING = REPO / "packaging" / "systemd"
UNIT = PACKAGING / "kanade-watchdog.service"
BACKEND_DROPIN = PACKAGING / "kanade-backend.service.d" / "10-after-watchdog.conf"
DIST_UNITS = Path("/usr/lib/systemd/system")
EXPOSURE_BAR = 1.5

pytestmark = pytest.mark.skipif(
    not shutil.which("systemd-analyze") or not DIST_UNITS.is_dir(),
    reason="systemd-analyze and the distribution's units are needed (Debian: apt-get install "
    "systemd)",
)


def parse_unit(text: str) -> dict[str, list[str]]:
    """`Section.Key` -> every value assigned, in order (repeatable keys add up)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


SHIPPED = parse_unit(UNIT.read_text())


def stub(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


def scratch_root(tmp_path: Path, unit_text: str | None = None) -> Path:
    """A root with the distribution's units, our units in /etc/systemd/system,
    a stand-in kanade backend with the shipped drop-in, and stub binaries."""
    root = tmp_path / "root"
    shutil.copytree(DIST_UNITS, root / DIST_UNITS.relative_to("/"), symlinks=True)
    etc = root / "etc" / "systemd" / "system"
    etc.mkdir(parents=True)
    (etc / UNIT.name).write_text(unit_text if unit_text is not None else UNIT.read_text())
    (etc / "kanade-backend.service").write_text(
        "[Unit]\nDescription=kanade backend (stand-in)\n\n"
        "[Service]\nExecStart=/opt/kanade/bin/kanade-backend\n"
    )
    dropins = etc / "kanade-backend.service.d"
    dropins.mkdir()
    shutil.copy(BACKEND_DROPIN, dropins / BACKEND_DROPIN.name)
    for command in [*SHIPPED["Service.ExecStart"], *SHIPPED["Service.ExecReload"]]:
        stub(root / command.split()[0].lstrip("/"))
    stub(root / "opt" / "kanade" / "bin" / "kanade-backend")
    return root


def verify(root: Path, unit: str) -> list[str]:
    """Every complaint `systemd-analyze verify` has: its output lines, plus
    its exit code when non-zero."""
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", unit],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    if proc.returncode != 0:
        problems.append(f"exit code {proc.returncode}")
    return problems


def exposure(unit: Path) -> tuple[float, int]:
    """(overall exposure, exit code with the bar as --threshold)."""
    proc = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            f"--threshold={round(EXPOSURE_BAR * 10)}",  # tenths, as systemd counts
            str(unit),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert found, proc.stdout + proc.stderr
    return float(found.group(1)), proc.returncode


# --- systemd's verdict -----------------------------------------------------------------


def test_shipped_unit_verifies_without_a_single_warning(tmp_path: Path) -> None:
    """`systemd-analyze verify --man=no` on the shipped unit prints nothing, exit 0."""
    assert verify(scratch_root(tmp_path), UNIT.name) == []


def test_backend_dropin_verifies_and_makes_the_backend_wait(tmp_path: Path) -> None:
    """The example drop-in verifies cleanly on a backend unit and makes it require
    and start after the watchdog, so it starts only once the watchdog is READY."""
    assert verify(scratch_root(tmp_path), "kanade-backend.service") == []
    dropin = parse_unit(BACKEND_DROPIN.read_text())
    assert "kanade-watchdog.service" in " ".join(dropin["Unit.Requires"]).split()
    assert "kanade-watchdog.service" in " ".join(dropin["Unit.After"]).split()


@pytest.mark.parametrize(
    ("section", "line"),
    [("[Service]", "WatchdogSecs=15s"), ("[Unit]", "Afterr=nats-server.service")],
)
def test_lint_fails_on_a_key_systemd_only_warns_about(
    tmp_path: Path, section: str, line: str
) -> None:
    """A misspelled key exits 0 from `verify` with a warning: the lint still fails."""
    text = UNIT.read_text().replace(f"\n{section}\n", f"\n{section}\n{line}\n", 1)
    problems = verify(scratch_root(tmp_path, text), UNIT.name)
    assert any("Unknown key" in p for p in problems), problems
    assert not any(p.startswith("exit code") for p in problems), problems


def test_exposure_is_at_or_under_the_bar() -> None:
    """`systemd-analyze security --offline=true` scores the unit at most 1.5."""
    score, code = exposure(UNIT)
    assert score <= EXPOSURE_BAR
    assert code == 0


def test_docs_state_the_measured_exposure() -> None:
    """docs/SYSTEMD.md quotes the score the unit really gets."""
    score, _ = exposure(UNIT)
    text = (REPO / "docs" / "SYSTEMD.md").read_text()
    quoted = set(re.findall(r"exposure \*\*(\d+\.\d)\*\*|scores\s+\*\*(\d+\.\d)\*\*", text))
    assert quoted, "docs/SYSTEMD.md states no exposure score"
    assert {float(a or b) for a, b in quoted} == {score}


def test_exposure_check_rejects_an_unhardened_unit(tmp_path: Path) -> None:
    """The same unit without its sandbox section scores far above the bar, so the
    check above can fail."""
    text = UNIT.read_text()
    bare = tmp_path / UNIT.name
    bare.write_text(text[: text.index("# --- sandbox")] + text[text.index("[Install]") :])
    score, code = exposure(bare)
    assert score > 5
    assert code != 0


# --- the contract with the daemon ------------------------------------------------------


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60}
    found = re.fullmatch(r"(\d+)(ms|s|min)?", value)
    assert found, value
    return int(found.group(1)) * units[found.group(2) or "s"]


def test_unit_states_the_daemons_systemd_contract() -> None:
    """notify readiness from the main PID only, a watchdog, reload by SIGHUP after
    validating the file, restart on failure except for a bad config (78),
    ordering after the broker and the network, config at /etc/kanade."""
    u = SHIPPED
    assert u["Service.Type"] == ["notify"]
    assert u["Service.NotifyAccess"] == ["main"]
    assert u["Service.Restart"] == ["on-failure"]
    assert str(exitcodes.CONFIG) in u["Service.RestartPreventExitStatus"][0].split()
    [start] = u["Service.ExecStart"]
    assert start.split()[1:] == ["run", "--config", DEFAULT_PATH]
    assert u["Service.ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert u["Service.ExecReload"][0].split()[1:] == ["validate", "--config", DEFAULT_PATH]
    after = " ".join(u["Unit.After"]).split()
    assert "nats-server.service" in after
    assert "network-online.target" in after
    assert "network-online.target" in " ".join(u["Unit.Wants"]).split()
    # The daemon's bounded stop must fit in systemd's, and a ping period of
    # WatchdogSec/2 must leave room for the loop to be late.
    assert seconds(u["Service.TimeoutStopSec"][0]) > WatchdogSettings().stop_timeout
    assert 10 <= seconds(u["Service.WatchdogSec"][0]) <= 20


def test_sandbox_leaves_what_the_daemon_needs() -> None:
    """A non-root identity that reads the config and reaches NATS (AF_INET/6) and
    systemd (AF_UNIX: notify socket, journal), and nothing more."""
    u = SHIPPED
    assert u["Service.DynamicUser"] == ["yes"]
    assert u["Service.ProtectSystem"] == ["strict"]
    assert u["Service.NoNewPrivileges"] == ["yes"]
    assert u["Service.CapabilityBoundingSet"] == [""]
    assert set(u["Service.RestrictAddressFamilies"][0].split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
    }
    assert "@system-service" in u["Service.SystemCallFilter"]
    assert "Service.PrivateNetwork" not in u  # the broker may be on another host


def test_sandbox_lets_the_http_listener_serve_loopback() -> None:
    """The opt-in [http] listener (127.0.0.1:9464 by default) needs no change to
    the sandbox: no IP address filter shuts loopback out, and an unprivileged
    port needs no capability (none is granted)."""
    u = SHIPPED
    denied = " ".join(u.get("Service.IPAddressDeny", [])).split()
    allowed = " ".join(u.get("Service.IPAddressAllow", [])).split()
    assert not denied or {"localhost", "127.0.0.0/8"} & set(allowed), (denied, allowed)
    assert u["Service.CapabilityBoundingSet"] == [""]
    assert int(DEFAULT_LISTEN.rpartition(":")[2]) >= 1024
