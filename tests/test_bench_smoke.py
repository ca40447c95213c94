"""The issue-13 benchmark scripts still run end to end (tiny sizes, one round).

They drive the daemon and the CLI as black boxes (log lines, --json
documents, the broker's audit), so a change of those outputs would silently
turn their tables into n/a cells: these tests catch that. No speed is
asserted, only that each script completes and prints a filled table.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def _run(*argv: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def _rows(lines: list[str], first_cell: str) -> list[list[str]]:
    """The cells of every table row whose first cell is `first_cell`."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if "|" in line]
    return [row for row in rows if row[0] == first_cell]


def test_scale_script_prints_a_full_pass_row_for_daemon_and_floor() -> None:
    """bench.scale at 100 streams: both healers get pass time and heal cells."""
    argv = ("--sizes", "100", "--rounds", "1", "--idle-size", "0", "--within", "20")
    lines = _run("bench.scale", *argv)
    assert any(line.startswith("`python -m bench.scale") for line in lines), lines
    rows = _rows(lines, "100")
    assert [row[2] for row in rows] == ["kanade-watchdog", "floor (nats-py)"], lines
    for row in rows:
        assert row[4] == "1", row  # one round measured
        assert "n/a" not in row, row


def test_oneshot_script_prints_apply_and_plan_rows() -> None:
    """bench.oneshot with 50 streams and one run: apply, plan and floor rows."""
    lines = _run("bench.oneshot", "--streams", "50", "--runs", "1")
    apply_row = _rows(lines, "`kanade-watchdog apply`")
    plan_row = _rows(lines, "`kanade-watchdog plan` right after")
    floor_row = _rows(lines, "floor: nats-py, 64 in flight")
    assert apply_row, lines
    assert plan_row, lines
    assert floor_row, lines
    assert apply_row[0][3] == "50", lines  # streams on the broker after the apply
    assert floor_row[0][3] == "50", lines
    assert _rows(lines, "`kanade-watchdog plan` (25 in sync)"), lines
    assert any(line.startswith("| nats |") for line in lines), lines  # importtime parsed


def test_heal_script_prints_every_row_for_daemon_and_floor() -> None:
    """bench.heal with 3 trials: 3 kinds x 2 faults for each healer, healed."""
    lines = _run("bench.heal", "--trials", "3")
    for healer in ("kanade-watchdog", "floor (nats-py)"):
        rows = _rows(lines, healer)
        assert {(row[1], row[2]) for row in rows} == {
            (kind, fault)
            for kind in ("stream", "kv", "object_store")
            for fault in ("delete", "drift")
        }, lines
        # A row is cut short only when the broker itself refuses the fault
        # (a nats-server race after a fast re-create), and then says so.
        cut_short = any("refused it" in line for line in lines)
        assert all(row[3] == "3" for row in rows) or cut_short, rows


def test_consumer_heal_script_prints_every_table() -> None:
    """bench.consumer_heal with 3 trials, one round and 2 x 2 consumers: both
    healers heal both faults, the verification rows count their requests,
    and the replay round stays within its bound with nothing skipped."""
    lines = _run("bench.consumer_heal", "--trials", "3", "--rounds", "1", "--scale", "2x2")
    checks = ("SIGHUP full pass", "paged CONSUMER.LIST per stream", "CONSUMER.INFO per consumer")
    for healer in ("kanade-watchdog", "floor (nats-py)"):
        rows = _rows(lines, healer)
        heals = [row for row in rows if row[1] not in checks]
        assert [row[1] for row in heals] == ["3", "3"], lines  # consumer, stream delete
        assert all("n/a" not in row for row in heals), heals
        verify = [row for row in rows if row[1] in checks]
        assert verify, lines
        # one STREAM.LIST, then a CONSUMER.LIST per stream or an INFO per consumer
        assert all(row[3] == ("5" if "INFO" in row[1] else "3") for row in verify), verify
    replay = _rows(lines, "resume = true")
    assert replay, lines
    for row in replay:
        assert int(row[6]) <= int(row[3]), row  # redelivered <= K
        assert row[7] == "0", row  # nothing skipped
    assert _rows(lines, 'resume = false, deliver "all"'), lines
