"""Recovery after the broker comes back (issue 13, tables 3 and 4).

Both tables watch the repo's 25 kanade resources (config.toml as shipped,
pointed at a local broker) and compare the daemon with the floor
(`bench.rawclient floor`: on connect and on every reconnect it probes
$JS.API.INFO every few milliseconds until JetStream answers, then creates
all 25 at once; it reconnects every 20 ms).

Table 3, kill -9 with a wiped store: per round the broker is killed, its store
deleted and the broker started again; the clock starts when its port first
greets (polled every millisecond) and stops when an observer, connecting
afresh and listing stream names every 5 ms, sees all 25. Daemon and floor
each have a broker of their own and take their rounds in turn.

Table 4, down at start: the healer starts while its broker is down; after the
outage the broker starts, and the clock runs the same way. Daemon and floor
each wait for a broker of their own, so one outage serves both: the floor's
broker starts once the daemon's round is measured.

Run: python -m bench.recovery [--quick] [--rounds 30] [--down-rounds 30]
     [--long] [--reconnect-wait 250ms]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors

from bench import rawclient as rc
from bench.procs import (
    Proc,
    header,
    is_ready,
    p50_p99_max,
    pct,
    repo_config_at,
    repo_resources,
    start_broker,
    write_json,
)
from tests.natsserver import NatsServer

NAMES = frozenset(c["name"] for c in rc.declared_configs(repo_resources()))
DEADLINE = 120.0
FLOORS = (False, True)  # the daemon's turn, then the floor's


async def all_back(url: str, t0: float) -> float:
    """Seconds from `t0` (perf_counter) until all 25 are listed."""
    nc = await nats.connect(url, name="bench-observer13", allow_reconnect=False)
    try:
        while time.perf_counter() - t0 < DEADLINE:
            try:
                if await rc.stream_names(nc, wait=0.05) >= NAMES:
                    return time.perf_counter() - t0
            except (nats.errors.Error, TimeoutError):
                pass
            await asyncio.sleep(0.005)
    finally:
        await nc.close()
    raise RuntimeError(f"not all 25 back within {DEADLINE}s")


@dataclass
class Timeline:
    """What the daemon's own log says, in ms after the port answered. Its
    outcomes are logged when the pass ends, all at once: the log says when
    the pass that made the creates was done, not when the first one left
    (a debug timeline with the requests is in docs/BENCHMARKS.md)."""

    connected: list[float] = field(default_factory=list)
    pass_done: list[float] = field(default_factory=list)

    def note(self, proc: Proc, mark: int, t0: float) -> None:
        wall0 = time.time() - (time.perf_counter() - t0)
        lines = proc.find(lambda x: x.get("action") in ("broker_back", "created"), after=mark)
        back = [float(x["ts"]) for x in lines if x.get("action") == "broker_back"]
        made = [float(x["ts"]) for x in lines if x.get("action") == "created"]
        if back:
            self.connected.append((back[0] - wall0) * 1000)
        if made:
            self.pass_done.append((made[-1] - wall0) * 1000)

    def line(self) -> str:
        def med(values: list[float]) -> str:
            return f"{statistics.median(values):.0f}" if values else "n/a"

        return (
            f"The daemon's own log (ms after the port answered, median / max): connected "
            f"{med(self.connected)} / {max(self.connected, default=0):.0f}, the pass with the "
            f"creates done {med(self.pass_done)} / {max(self.pass_done, default=0):.0f} "
            f"(outcomes are logged when the pass ends; log timestamps have 1 ms resolution)."
        )


def _healer(tmp: Path, url: str, *, floor: bool, reconnect_wait: str | None) -> Proc:
    if floor:
        configs = write_json(tmp / "floor.json", rc.declared_configs(repo_resources()))
        return Proc.floor(configs, url)
    text = repo_config_at(url)
    if reconnect_wait:
        text = text.replace("[nats]\n", f'[nats]\nreconnect_wait = "{reconnect_wait}"\n', 1)
    conf = tmp / "daemon.toml"
    conf.write_text(text)
    return Proc.daemon(conf, level="info")


async def _wipe_rounds(
    tmp: Path, rounds: int, timeline: Timeline, *, reconnect_wait: str | None
) -> dict[bool, list[float]]:
    """Daemon and floor each on a broker of their own, their rounds taken in
    turn: the create time of 25 stores on a shared machine drifts by 2-3x
    within minutes, and a drift must slow both alike, not one side's rounds."""
    srvs = {floor: NatsServer(tmp, name="floor" if floor else "daemon").start() for floor in FLOORS}
    procs = {
        floor: _healer(tmp, srv.url, floor=floor, reconnect_wait=reconnect_wait)
        for floor, srv in srvs.items()
    }
    samples: dict[bool, list[float]] = {floor: [] for floor in FLOORS}
    try:
        for proc in procs.values():
            await proc.wait_for(is_ready, within=60)
        for _ in range(rounds):
            for floor in FLOORS:
                proc, srv = procs[floor], srvs[floor]
                await proc.quiet(0.3)
                mark = proc.mark()
                srv.kill()
                srv.wipe_store()
                t0 = start_broker(srv)
                samples[floor].append(await all_back(srv.url, t0) * 1000)
                await proc.quiet(0.2)
                if not floor:
                    timeline.note(proc, mark, t0)
    finally:
        for proc in procs.values():
            proc.stop()
        for srv in srvs.values():
            srv.stop()
    return samples


def _rows(results: dict[str, list[float]], label: str) -> list[str]:
    floor_key = next(k for k in results if k.startswith("floor"))
    f50 = statistics.median(results[floor_key]) if results[floor_key] else float("nan")
    f99 = pct(results[floor_key], 99) if results[floor_key] else float("nan")
    rows = []
    for name, samples in results.items():
        if not samples:
            rows.append(f"| {label} | {name} | 0 | n/a | n/a | n/a | | | |")
            continue
        p50, p99 = statistics.median(samples), pct(samples, 99)
        rows.append(
            f"| {label} | {name} | {len(samples)} | {p50_p99_max(samples, '{:.0f}')} | "
            f"{p50 / f50:.1f}x | {p99 / f99:.1f}x | {max(samples) / p50:.1f}x |"
        )
    return rows


TABLE_HEAD = [
    "| case | healer | rounds | p50 ms | p99 ms | max ms | p50 / floor p50 "
    "| p99 / floor p99 | own max / own p50 |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|",
]


def wipe_table(rounds: int, reconnect_wait: str | None, command: str) -> list[str]:
    rows = header("Broker kill -9 with a wiped store: port answers -> all 25 back", command)
    rows += TABLE_HEAD
    timeline = Timeline()
    with tempfile.TemporaryDirectory() as tmp:
        samples = asyncio.run(
            _wipe_rounds(Path(tmp), rounds, timeline, reconnect_wait=reconnect_wait)
        )
    results = {"kanade-watchdog": samples[False], "floor (nats-py)": samples[True]}
    wait = f"reconnect_wait {reconnect_wait}" if reconnect_wait else "shipped config.toml"
    return [*rows, *_rows(results, f"kill -9 + wipe ({wait})"), "", timeline.line()]


async def _down_round(
    tmp: Path, outage: float, reconnect_wait: str | None, timeline: Timeline
) -> tuple[float, float]:
    brokers = {floor: NatsServer(tmp, name=f"down{int(floor)}") for floor in (False, True)}
    procs = {
        floor: _healer(tmp, srv.url, floor=floor, reconnect_wait=reconnect_wait)
        for floor, srv in brokers.items()
    }
    spawned = time.monotonic()
    out: dict[bool, float] = {}
    try:
        await asyncio.sleep(max(0.0, outage - (time.monotonic() - spawned)))
        for floor in (False, True):  # the daemon first: its outage is exactly `outage`
            t0 = start_broker(brokers[floor])
            out[floor] = await all_back(brokers[floor].url, t0) * 1000
            if not floor:
                await procs[floor].quiet(0.2)
                timeline.note(procs[floor], 0, t0)
    finally:
        for proc in procs.values():
            proc.stop()
        for srv in brokers.values():
            srv.stop()
            srv.wipe_store()
    return out[False], out[True]


def down_table(
    outages: list[tuple[float, int]], reconnect_wait: str | None, command: str
) -> list[str]:
    rows = header("Broker down at start, then up: port answers -> all 25 exist", command)
    rows += TABLE_HEAD
    notes: list[str] = []
    for outage, rounds in outages:
        results: dict[str, list[float]] = {"kanade-watchdog": [], "floor (nats-py)": []}
        timeline = Timeline()
        for _ in range(rounds):
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    ours, floor = asyncio.run(
                        _down_round(Path(tmp), outage, reconnect_wait, timeline)
                    )
                except RuntimeError as exc:
                    rows.append(f"| outage {outage:g} s | round failed: {exc} | | | | | | | |")
                    continue
            results["kanade-watchdog"].append(ours)
            results["floor (nats-py)"].append(floor)
        rows += _rows(results, f"outage {outage:g} s")
        notes += ["", f"Outage {outage:g} s: {timeline.line()}"]
    return rows + notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 wipe rounds, 3 x 1 s outage")
    parser.add_argument("--rounds", type=int, default=None, help="wipe rounds (default 30)")
    parser.add_argument(
        "--down-rounds", type=int, default=None, help="rounds of the 1 s outage (default 30)"
    )
    parser.add_argument("--long-rounds", type=int, default=5, help="rounds of the 30 s outage")
    parser.add_argument("--long", action="store_true", help="add the 240 s outage (2 rounds)")
    parser.add_argument("--reconnect-wait", default=None, help='e.g. "100ms" (default: shipped)')
    args = parser.parse_args(argv)
    command = " ".join(["python -m bench.recovery", *(sys.argv[1:] if argv is None else argv)])
    rounds = args.rounds if args.rounds is not None else (5 if args.quick else 30)
    down = args.down_rounds if args.down_rounds is not None else (3 if args.quick else 30)
    outages = [(1.0, down)]
    if not args.quick:
        outages.append((30.0, args.long_rounds))
    if args.long and not args.quick:
        outages.append((240.0, 2))
    if rounds:
        for row in wipe_table(rounds, args.reconnect_wait, command):
            print(row, flush=True)
    if down:
        for row in down_table(outages, args.reconnect_wait, command):
            print(row, flush=True)


if __name__ == "__main__":
    main()
