"""Where a full pass of the daemon spends its time: py-spy samples the daemon
process (from outside; nothing is imported from kanade_watchdog) while one
SIGHUP-triggered full pass runs over N declared tiny streams, and the
collapsed stacks are summed per function.

Needs py-spy (`pip install py-spy`) next to the interpreter or on PATH, and
the right to trace the daemon (root, or ptrace_scope 0).

Run: python -m bench.passprofile [--streams 10000] [--rate 100] [--top 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import nats

from bench import rawclient as rc
from bench.procs import Proc, daemon_toml, header, is_ready, pass_line
from bench.scale import LONG_PASSES, WITHIN
from tests.natsserver import NatsServer


def py_spy() -> str:
    here = Path(sys.executable).parent / "py-spy"
    found = str(here) if here.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


def _frame(entry: str) -> str:
    """'func (path/to/module.py:123)' -> 'module.py:func'."""
    name, _, where = entry.partition(" (")
    return f"{Path(where.split(':')[0]).name}:{name}" if where else name


def summarize(raw: str, top: int) -> list[str]:
    """Share of samples per function: inclusive (anywhere on the stack) and
    self (the innermost frame)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    rows = [f"{total} samples while the daemon was on CPU (frames on every stack left out).", ""]
    rows += ["| function | inclusive | self |", "|---|---:|---:|"]
    # The entry-point chain (runpy, the CLI, the loop) is on every stack: skip it.
    ranked = [f for f, c in inclusive.most_common() if c < 0.99 * total]
    for frame in [f for f in ranked if inclusive[f] >= total / 200][:top]:
        rows.append(
            f"| `{frame}` | {inclusive[frame] / total:.0%} | {own[frame] / max(total, 1):.0%} |"
        )
    rows += ["", "Heaviest self time:", "", "| function | self |", "|---|---:|"]
    rows += [
        f"| `{f}` | {n / max(total, 1):.0%} |"
        for f, n in own.most_common(top)
        if n >= total / 200  # half a percent: below it is noise at this sampling rate
    ]
    return rows


async def _profile(n: int, rate: int, tmp: Path) -> tuple[str, float]:
    srv = NatsServer(tmp, name="profile").start()
    try:
        setup = await nats.connect(srv.url, name="bench-setup13")
        assert not await rc.create_all(setup, [rc.tiny_config(i) for i in range(n)])
        await setup.close()
        conf = tmp / "profile.toml"
        watchdog = {"resync_interval": "1h", "resync_jitter": "0s", **LONG_PASSES}
        conf.write_text(daemon_toml(srv.url, rc.tiny_toml(n), watchdog=watchdog))
        proc = Proc.daemon(conf)
        out = tmp / "stacks.txt"
        try:
            await proc.wait_for(is_ready, within=WITHIN)
            await proc.quiet(1.0)
            spy = await asyncio.create_subprocess_exec(
                py_spy(),
                *("record", "--pid", str(proc.pid), "--rate", str(rate)),
                *("--format", "raw", "--output", str(out), "--nonblocking"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(1.0)  # py-spy attached
            mark, started = proc.mark(), time.time()
            proc.signal()
            done = await proc.wait_for(pass_line("reload"), after=mark, within=WITHIN)
            elapsed = float(done.get("ts") or done["_seen"]) - started
            spy.send_signal(signal.SIGINT)
            await asyncio.wait_for(spy.wait(), 60)
        finally:
            proc.stop()
        return (out.read_text() if out.exists() else ""), elapsed
    finally:
        srv.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=10000)
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    if os.geteuid() != 0 and Path("/proc/sys/kernel/yama/ptrace_scope").read_text()[0] != "0":
        raise SystemExit("py-spy needs root or kernel.yama.ptrace_scope=0")
    command = " ".join(["python -m bench.passprofile", *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory() as tmp:
        raw, elapsed = asyncio.run(_profile(args.streams, args.rate, Path(tmp)))
    rows = header(f"Profile of one full pass at {args.streams} declared streams", command)
    rows += [f"SIGHUP -> `pass (reload)` line: {elapsed:.1f} s, sampled at {args.rate}/s, "]
    rows += summarize(raw, args.top)
    for row in rows:
        print(row, flush=True)


if __name__ == "__main__":
    main()
