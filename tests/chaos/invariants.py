"""The checks every fault scenario ends with, whatever the fault was.

- the daemon never sent a DELETE or a PURGE (the broker's own audit says so);
- once in sync it writes nothing: a full resync pass later, zero CREATE or
  UPDATE requests from it;
- it is still running (it never exits on its own), and SIGTERM stops it
  with exit 0 and no error logged, so within its own stop timeout;
- its resident memory did not grow across the fault cycles beyond a small
  allowance for warm-up (caches, the first reconnect's imports).

Each check also fills in the scenario's `Figure`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from pathlib import Path

from tests.chaos.figures import MIB
from tests.chaos.harness import Scene, is_pass
from tests.daemonproc import DaemonProc, Line, Predicate

RSS_SLACK = 8 * MIB  # growth allowed from the baseline (after warm-up) to the end
RSS_SLACK_RATIO = 0.15


def rss(daemon: DaemonProc) -> int:
    """The daemon's resident set size in bytes, from /proc."""
    assert daemon.proc is not None
    for row in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def cpu_seconds(daemon: DaemonProc) -> float:
    """User + system CPU the daemon has used so far."""
    assert daemon.proc is not None
    fields = Path(f"/proc/{daemon.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def full_in_sync_pass(total: int) -> Predicate:
    def check(line: Line) -> bool:
        text = str(line.get("message", ""))
        return (
            is_pass(line)
            and "events" not in text
            and text.endswith(f"{total} looked at, {total} in sync")
        )

    return check


async def no_destructive(scene: Scene) -> None:
    """No DELETE or PURGE by the watchdog (the daemon or a command) on the
    broker's audit, which must have seen it at work."""
    audit = await scene.ledger.collect()
    # An audit that saw nothing of the watchdog would prove nothing.
    assert any(c.verb == "STREAM.LIST" for c in audit.calls), "audit saw no watchdog call"
    bad = audit.destructive()
    scene.figure.destructive = len(bad)
    assert not bad, [c.subject for c in bad]


class Invariants:
    def __init__(self, scene: Scene, daemon: DaemonProc) -> None:
        self.scene = scene
        self.daemon = daemon
        self.rss_baseline = 0

    def alive(self) -> None:
        assert self.daemon.alive, (
            f"the daemon exited on its own ({self.daemon.proc and self.daemon.proc.poll()})\n"
            + self.daemon.tail()
        )

    def baseline(self) -> int:
        """Take the memory baseline now (after start-up and warm-up)."""
        self.rss_baseline = rss(self.daemon)
        if not self.scene.figure.rss_start:
            self.scene.figure.rss_start = self.rss_baseline
        return self.rss_baseline

    def memory_flat(self) -> None:
        now = rss(self.daemon)
        self.scene.figure.rss_end = now
        allowed = max(RSS_SLACK, int(self.rss_baseline * RSS_SLACK_RATIO))
        assert now - self.rss_baseline <= allowed, (
            f"daemon RSS grew from {self.rss_baseline / MIB:.1f} MiB to {now / MIB:.1f} MiB"
        )

    async def no_destructive(self) -> None:
        await no_destructive(self.scene)

    async def quiet_when_in_sync(
        self, *, passes: int = 1, within: float = 15.0, skip: Iterable[str] = ()
    ) -> None:
        """With everything in sync, `passes` full resync passes (each reading
        every declared resource) cause zero writes. `skip` names streams that
        are known not to converge (a refusal scenario) and are not counted."""
        skipped = set(skip)
        audit = await self.scene.ledger.collect()
        mark, log_mark = audit.mark(), self.daemon.mark()
        total = len(self.scene.resources)
        full = (
            (lambda line: is_pass(line) and "events" not in str(line.get("message")))
            if skipped
            else full_in_sync_pass(total)
        )
        wanted = passes + 1 if skipped else passes
        # A pass already under way at the mark logs after it but read before
        # it: wait for one more until the window holds a read of its own.
        for extra in range(3):
            await self.daemon.wait_for(full, after=log_mark, n=wanted + extra, within=within)
            await audit.collect(settle=0.1)
            if any(c.verb == "STREAM.LIST" for c in audit.calls[mark:]):
                break
        else:
            raise AssertionError("no resync read by the daemon seen in the window")
        writes = [c for c in audit.writes(after=mark) if c.stream not in skipped]
        self.scene.figure.writes_in_sync += len(writes)
        assert not writes, [c.subject for c in writes]
        self.alive()

    async def stops_cleanly(self, *, within: float = 15.0) -> None:
        """SIGTERM: the daemon says it is stopping and exits 0 with no error
        logged on the way (a stop that misses its own `stop_timeout` logs the
        tasks still running as an error) and no traceback. `within` only
        bounds the wait for a daemon that would not exit at all."""
        self.alive()
        mark = self.daemon.mark()
        self.daemon.send(signal.SIGTERM)
        code = await self.daemon.wait_exit(within)
        assert code == 0, self.daemon.tail()
        after = self.daemon.find(lambda _line: True, after=mark)
        assert any(line.get("action") == "stopping" for line in after), self.daemon.tail()
        errors = [line for line in after if line.get("level") in ("error", "critical")]
        assert not errors, errors
        assert not [r for r in self.daemon.raw if "Traceback" in r], self.daemon.raw[-20:]
