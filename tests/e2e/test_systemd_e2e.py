"""kanade-watchdog under a real systemd, through the SHIPPED unit file.

One throwaway container per module (`conftest.machine`): systemd 252 as PID 1,
nats-server as a unit inside, the watchdog unit exactly as shipped, and a
stand-in backend with the shipped drop-in. Tests drive it with systemctl and
journalctl through nsenter, and act on the broker with `probe.py` (a second
NATS client run inside). Every wait polls with a deadline.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from kanade_watchdog.model.events import MESSAGE_IDS, Event
from tests.e2e.conftest import CONFIG_PATH, TIMINGS, e2e_config
from tests.e2e.machine import INSTALL_PATH, Machine
from tests.helpers_streams import ALL_STREAMS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

UNIT = "kanade-watchdog.service"
BROKER = "nats://127.0.0.1:4222"
POLL = 0.05


def poll(what: str, check: Callable[[], Any], within: float, m: Machine) -> Any:
    """`check()` until truthy; on timeout fail with the unit's state and log."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            units = [UNIT, "nats-server.service", "kanade-backend.service"]
            state = m.systemctl("status", *units, check=False).stdout
            log = m.run("journalctl", "--no-pager", "-n", "60", check=False).stdout
            raise AssertionError(f"no {what} within {within}s\n{state}\n{log}")
        time.sleep(POLL)


def state(m: Machine, unit: str = UNIT) -> dict[str, str]:
    return m.show(unit, "ActiveState", "SubState", "StatusText", "MainPID", "NRestarts", "Result")


def streams(m: Machine) -> set[str]:
    out = m.run(f"{INSTALL_PATH}/bin/python", f"{m.workdir}/probe.py", "list").stdout
    return set(json.loads(out))


def delete(m: Machine, name: str) -> None:
    m.run(f"{INSTALL_PATH}/bin/python", f"{m.workdir}/probe.py", "delete", name)


def entries(m: Machine, cursor: str, **match: str) -> list[dict[str, Any]]:
    """Journal entries about the unit (its own and systemd's) after `cursor` with
    these field values. Filtered here: journalctl 252 given both --after-cursor
    and matches skips the first matching entry when the cursor's own entry does
    not match."""
    return [
        e
        for e in m.journal(f"--after-cursor={cursor}")
        if UNIT in (e.get("_SYSTEMD_UNIT"), e.get("UNIT"))
        and all(e.get(k) == v for k, v in match.items())
    ]


def said(m: Machine, cursor: str, text: str) -> bool:
    """Whether a journal message about the unit after `cursor` contains `text`."""
    return any(text in str(e.get("MESSAGE", "")) for e in entries(m, cursor))


def bring_up(m: Machine) -> dict[str, str]:
    """Broker and watchdog started; returns the watchdog's state once active."""
    m.systemctl("start", "nats-server.service")
    m.systemctl("start", "--no-block", UNIT)
    active: dict[str, str] = poll("active watchdog", lambda: _active(m), 60, m)
    return active


def _active(m: Machine) -> dict[str, str] | None:
    s = state(m)
    return s if s["ActiveState"] == "active" else None


def test_start_waits_activating_for_the_broker_then_goes_active(
    machine: Machine, fresh: str
) -> None:
    """With the broker stopped the unit stays 'activating' with a STATUS naming the
    broker, and the backend (Requires=+After=) waits; once nats-server starts and
    all 25 resources exist it goes 'active', then the backend starts."""
    m = machine
    m.systemctl("start", "--no-block", "kanade-backend.service")  # pulls the watchdog in
    waiting = poll(
        "waiting status",
        lambda: (s := state(m))["StatusText"].startswith("waiting for broker") and s,
        30,
        m,
    )
    assert waiting["ActiveState"] == "activating"
    assert waiting["StatusText"] == f"waiting for broker {BROKER}"
    status = m.systemctl("status", UNIT, check=False).stdout
    assert f'Status: "waiting for broker {BROKER}"' in status
    for _ in range(10):  # a second later: still starting, still no restart
        time.sleep(0.1)
        assert state(m)["ActiveState"] == "activating"
    assert state(m, "kanade-backend.service")["ActiveState"] == "inactive"
    assert "kanade-backend.service" in m.systemctl("list-jobs").stdout

    started = time.monotonic()
    m.systemctl("start", "nats-server.service")
    active = poll("active watchdog", lambda: _active(m), 60, m)
    TIMINGS["activating -> active, from broker start"] = time.monotonic() - started
    assert active["SubState"] == "running"
    assert active["StatusText"].startswith("25/25 in sync")
    assert active["NRestarts"] == "0"
    assert streams(m) >= ALL_STREAMS
    backend_up = poll(
        "backend active",
        lambda: state(m, "kanade-backend.service")["ActiveState"] == "active",
        10,
        m,
    )
    assert backend_up
    status = m.systemctl("status", UNIT).stdout
    assert re.search(r'Status: "25/25 in sync', status), status
    # The sandbox is real: a transient non-root user runs the daemon.
    proc_status = m.run("cat", f"/proc/{active['MainPID']}/status").stdout
    uid = re.search(r"^Uid:\s+(\d+)", proc_status, re.M)
    assert uid, proc_status
    assert uid.group(1) != "0", proc_status


def test_stream_deleted_from_outside_is_recreated_and_journaled(
    machine: Machine, fresh: str
) -> None:
    """A stream deleted behind the daemon's back is re-created, STATUS shows the
    heal, and `journalctl -u kanade-watchdog KANADE_ACTION=created` lists it with
    its KANADE_* fields and fixed MESSAGE_ID."""
    m = machine
    bring_up(m)
    cursor = m.cursor()
    started = time.monotonic()
    delete(m, "RESULTS")
    created = poll(
        "a created entry for RESULTS",
        lambda: [
            e
            for e in entries(m, cursor, KANADE_ACTION="created")
            if e.get("KANADE_RESOURCE") == "RESULTS"
        ],
        30,
        m,
    )[0]
    TIMINGS["heal: delete -> created (journal)"] = time.monotonic() - started
    assert created["MESSAGE_ID"] == MESSAGE_IDS[Event.CREATED]
    assert created["KANADE_KIND"] == "stream"
    assert created["KANADE_STREAM"] == "RESULTS"
    assert created["KANADE_TRIGGER"] == "advisory"
    assert created["PRIORITY"] == "6"
    assert created["SYSLOG_IDENTIFIER"] == "kanade-watchdog"
    assert created["_SYSTEMD_UNIT"] == UNIT
    assert "RESULTS" in streams(m)
    # The operator's own command, as documented.
    text = m.run(
        "journalctl", "--no-pager", "-u", "kanade-watchdog", "KANADE_ACTION=created"
    ).stdout
    assert re.search(r"kanade-watchdog\[\d+\]: created stream RESULTS \(trigger advisory\)", text)
    heal = poll(
        "status with the heal", lambda: "last heal RESULTS" in state(m)["StatusText"], 10, m
    )
    assert heal


FETCH = """
import sys, urllib.error, urllib.request
try:
    r = urllib.request.urlopen("http://127.0.0.1:9464" + sys.argv[1], timeout=5)
except urllib.error.HTTPError as e:
    r = e
print(r.status)
print(r.read().decode(), end="")
"""


def fetch(m: Machine, path: str) -> tuple[int, str]:
    """GET the daemon's endpoint from inside the container."""
    out = m.run(f"{INSTALL_PATH}/bin/python", "-c", FETCH, path).stdout
    status, _, body = out.partition("\n")
    return int(status), body


def test_http_listener_serves_under_the_shipped_sandbox(machine: Machine, fresh: str) -> None:
    """With `[http] listen = "127.0.0.1:9464"`, the daemon under the shipped
    unit and its sandbox serves /healthz and /readyz, and /metrics counts a
    heal: loopback needs nothing more from the unit."""
    m = machine
    m.write(CONFIG_PATH, e2e_config('\n[http]\nlisten = "127.0.0.1:9464"\n'))
    bring_up(m)
    assert fetch(m, "/healthz") == (200, "ok\n")
    poll("/readyz 200", lambda: fetch(m, "/readyz")[0] == 200, 10, m)
    delete(m, "RESULTS")
    heals = 'kanade_watchdog_heals_total{kind="stream",trigger="advisory"} 1.0'
    poll("the heal counted", lambda: heals in fetch(m, "/metrics")[1], 30, m)


def test_reload_after_a_config_edit_creates_the_new_stream(machine: Machine, fresh: str) -> None:
    """`systemctl reload` after adding a stream to the file creates it in place (same
    PID, no restart) and the unit returns to 'active'."""
    m = machine
    before = bring_up(m)
    m.write(CONFIG_PATH, e2e_config('\n[streams.ADDED]\nsubjects = ["added.>"]\n'))
    cursor = m.cursor()
    started = time.monotonic()
    m.systemctl("reload", UNIT)
    created = poll(
        "a created entry for ADDED",
        lambda: [
            e
            for e in entries(m, cursor, KANADE_ACTION="created")
            if e.get("KANADE_RESOURCE") == "ADDED"
        ],
        30,
        m,
    )[0]
    assert created["KANADE_TRIGGER"] == "reload"
    after = poll("active after reload", lambda: _active(m), 30, m)
    TIMINGS["reload -> new stream created, active"] = time.monotonic() - started
    assert after["MainPID"] == before["MainPID"]
    assert after["NRestarts"] == "0"
    assert after["StatusText"].startswith("26/26 in sync")
    assert "ADDED" in streams(m)


def test_reload_with_a_broken_config_fails_and_keeps_the_daemon(
    machine: Machine, fresh: str
) -> None:
    """`systemctl reload` on an invalid file fails (ExecReload validates first) and
    the daemon keeps running the previous config in the same process."""
    m = machine
    before = bring_up(m)
    m.write(CONFIG_PATH, e2e_config('\n[streams.BROKEN]\nsubjects = "nope"\n'))
    reload = m.systemctl("reload", UNIT, check=False)
    assert reload.returncode != 0
    after = state(m)
    assert after["ActiveState"] == "active"
    assert after["MainPID"] == before["MainPID"]


def test_wedged_daemon_is_killed_by_the_watchdog_and_restarted(
    machine: Machine, fresh: str
) -> None:
    """A daemon that stops making progress (frozen with SIGSTOP: no ping can
    leave it) is caught by WatchdogSec: systemd reports 'Watchdog timeout',
    aborts it, restarts it (Restart=on-failure), the new process heals what
    the frozen one could not, and the backend that requires it is restarted
    behind it, after the new READY=1. (That a wedged pass withholds the pings
    is proved in-process by tests/test_lifecycle.py.)"""
    m = machine
    m.systemctl("start", "nats-server.service")
    m.systemctl("start", "kanade-backend.service")  # returns once the watchdog is READY
    before = state(m)
    backend = state(m, "kanade-backend.service")
    assert (before["ActiveState"], backend["ActiveState"]) == ("active", "active")
    cursor = m.cursor()
    m.systemctl("kill", "--kill-who=main", "--signal=SIGSTOP", UNIT)
    wedged = time.monotonic()
    delete(m, "EVENTS")  # its advisory waits in a socket nobody reads
    poll("the watchdog timeout", lambda: said(m, cursor, "Watchdog timeout"), 40, m)
    TIMINGS["wedge -> watchdog timeout"] = time.monotonic() - wedged
    after = poll(
        "a restarted, active watchdog",
        lambda: (s := _active(m)) and s["MainPID"] != before["MainPID"] and s,
        60,
        m,
    )
    TIMINGS["wedge -> restarted and active"] = time.monotonic() - wedged
    assert after["NRestarts"] == "1"
    assert said(m, cursor, "Failed with result 'watchdog'")
    assert "EVENTS" in streams(m)
    # Requires= carries the restart to the backend, which starts again only
    # after the new watchdog process is READY (After=).
    times = "ActiveEnterTimestampMonotonic"
    again = poll(
        "the backend restarted",
        lambda: (
            (b := m.show("kanade-backend.service", "ActiveState", "MainPID", times))
            and b["ActiveState"] == "active"
            and b["MainPID"] != backend["MainPID"]
            and b
        ),
        30,
        m,
    )
    assert int(again[times]) >= int(m.show(UNIT, times)[times])


def test_stop_ends_cleanly(machine: Machine, fresh: str) -> None:
    """`systemctl stop` returns promptly: the daemon logs 'stopping' and exits 0,
    result 'success', nothing left for SIGKILL."""
    m = machine
    bring_up(m)
    cursor = m.cursor()
    started = time.monotonic()
    m.systemctl("stop", UNIT)
    TIMINGS["systemctl stop"] = time.monotonic() - started
    after = m.show(UNIT, "ActiveState", "Result", "ExecMainStatus")
    assert after["ActiveState"] == "inactive"
    assert after["Result"] == "success"
    assert after["ExecMainStatus"] == "0"
    assert entries(m, cursor, KANADE_ACTION="stopping")
    assert not said(m, cursor, "SIGKILL")
    assert not said(m, cursor, "Killing")


def test_bad_config_fails_the_start_without_restarts(machine: Machine, fresh: str) -> None:
    """An unusable config exits 78 and RestartPreventExitStatus=78 leaves the unit
    'failed' at once instead of scheduling restarts."""
    m = machine
    m.systemctl("start", "nats-server.service")
    m.write(CONFIG_PATH, "[streams.X]\nsubjects = 5\n")
    start = m.systemctl("start", UNIT, check=False)
    assert start.returncode != 0
    after = m.show(UNIT, "ActiveState", "SubState", "ExecMainStatus", "NRestarts", "Result")
    assert after["ActiveState"] == "failed", after
    assert after["ExecMainStatus"] == "78"
    assert after["Result"] == "exit-code"
    assert after["NRestarts"] == "0"
