"""A delete storm (issue 13, table 8): RATE deletes per second for SECONDS,
round-robin over a pool of tiny memory streams the healer declares.

Per healer (the daemon at info level, resync 1 h so that only advisories
heal; then the floor) on a fresh broker:
- a generator connection sends the deletes on a 10 ms tick, each as its own
  request, and records when it was sent and whether the broker deleted
  anything (a stream still missing from its previous delete answers 'not
  found': counted, it is a heal slower than the pool's cycle);
- an observer connection records every CREATED advisory and the broker's API
  audit (STREAM.CREATE requests per stream, by client name);
- heal latency of a delete = from sending it until the CREATED advisory of
  the same stream; by window of the storm, so a growing backlog shows as
  rising latency;
- exactly once: per stream, the healer's STREAM.CREATE requests (audit)
  against the deletes that removed it.

Run: python -m bench.storm [--quick] [--rate 1000] [--seconds 30] [--pool 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from bench import rawclient as rc
from bench.procs import (
    Audit,
    Proc,
    client_name,
    daemon_toml,
    header,
    is_ready,
    p50_p99_max,
    write_json,
)
from tests.natsserver import NatsServer

TICK = 0.01


@dataclass
class Delete:
    stream: str
    sent: float
    ok: bool = False
    missing: bool = False


@dataclass
class StormResult:
    healer: str
    deletes: list[Delete] = field(default_factory=list)
    created: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    creates: dict[str, int] = field(default_factory=dict)  # audit, by the healer
    settle_s: float = float("nan")
    start: float = 0.0


async def _send(nc: Client, d: Delete) -> None:
    try:
        answer = await rc.api(nc, f"$JS.API.STREAM.DELETE.{d.stream}", wait=5)
    except (nats.errors.Error, TimeoutError):
        return
    d.ok = bool(answer.get("success"))
    d.missing = (answer.get("error") or {}).get("err_code") == 10059


async def _storm(tmp: Path, pool: int, rate: int, seconds: float, *, floor: bool) -> StormResult:
    res = StormResult("floor (nats-py)" if floor else "kanade-watchdog")
    srv = NatsServer(tmp, name="storm-floor" if floor else "storm-daemon").start()
    try:
        setup = await nats.connect(srv.url, name="bench-setup13")
        assert not await rc.create_all(setup, [rc.tiny_config(i) for i in range(pool)])
        await setup.close()
        if floor:
            configs = write_json(tmp / "storm.json", [rc.tiny_config(i) for i in range(pool)])
            proc = Proc.floor(configs, srv.url)
        else:
            conf = tmp / "storm.toml"
            watchdog = {"resync_interval": "1h", "resync_jitter": "0s"}
            conf.write_text(daemon_toml(srv.url, rc.tiny_toml(pool), watchdog=watchdog))
            proc = Proc.daemon(conf, level="info")
        try:
            await proc.wait_for(is_ready, within=600)
            await proc.quiet(0.5)
            obs = await nats.connect(srv.url, name="bench-observer13")
            audit = await Audit().start(obs)

            async def on_created(msg: Msg) -> None:
                res.created[msg.subject.rsplit(".", 1)[-1]].append(time.perf_counter())

            await obs.subscribe("$JS.EVENT.ADVISORY.STREAM.CREATED.*", cb=on_created)
            await obs.flush()
            gen = await nats.connect(srv.url, name="bench-storm13", pending_size=64 * 1024**2)
            tasks: list[asyncio.Task[None]] = []
            total = round(rate * seconds)
            res.start = time.perf_counter()
            while len(res.deletes) < total:
                due = min(total, int((time.perf_counter() - res.start) * rate) + 1)
                while len(res.deletes) < due:
                    d = Delete(rc.tiny_name(len(res.deletes) % pool), time.perf_counter())
                    res.deletes.append(d)
                    tasks.append(asyncio.ensure_future(_send(gen, d)))
                await asyncio.sleep(TICK)
            await asyncio.gather(*tasks)
            names = {rc.tiny_name(i) for i in range(pool)}
            ended = time.perf_counter()
            while time.perf_counter() - ended < 120:
                if names <= await rc.stream_names(gen, wait=10):
                    res.settle_s = time.perf_counter() - ended
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(1)  # the last audit lines
            res.creates = dict(audit.creates[client_name(floor)])
            await gen.close()
            await obs.close()
        finally:
            proc.stop()
    finally:
        srv.stop()
    return res


def _latencies(res: StormResult) -> list[tuple[float, float | None]]:
    """(sent offset s, heal ms or None) per delete that removed its stream:
    the first CREATED of that stream after the delete was sent."""
    out: list[tuple[float, float | None]] = []
    for d in res.deletes:
        if not d.ok:
            continue
        times = res.created.get(d.stream, [])
        i = bisect.bisect_right(times, d.sent)
        heal = (times[i] - d.sent) * 1000 if i < len(times) else None
        out.append((d.sent - res.start, heal))
    return out


def _summary(res: StormResult) -> str:
    lat = _latencies(res)
    healed = [ms for _, ms in lat if ms is not None]
    by_stream: dict[str, int] = defaultdict(int)
    for d in res.deletes:
        by_stream[d.stream] += d.ok
    twice = sum(1 for s, n in by_stream.items() if res.creates.get(s, 0) > n)
    short = sum(1 for s, n in by_stream.items() if res.creates.get(s, 0) < n)
    missing = sum(d.missing for d in res.deletes)
    return (
        f"| {res.healer} | {len(res.deletes)} | {sum(d.ok for d in res.deletes)} | {missing} | "
        f"{sum(res.creates.values())} | {twice} | {short} | {res.settle_s:.2f} s | "
        f"{p50_p99_max(healed)} |"
    )


def storm_table(pool: int, rate: int, seconds: float, command: str) -> list[str]:
    rows = header(
        f"Delete storm: {rate} deletes/s for {seconds:g} s over {pool} declared streams", command
    )
    results = []
    for floor in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(asyncio.run(_storm(Path(tmp), pool, rate, seconds, floor=floor)))
    rows += [
        "| healer | deletes sent | removed a stream | found it missing | STREAM.CREATE by healer "
        "| streams created more often than deleted | streams created less often than deleted "
        "| all back after the storm | heal ms p50 | p99 | max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows += [_summary(r) for r in results]
    window = 5.0 if seconds >= 10 else 1.0
    rows += [
        "",
        f"Heal latency by {window:g} s window of the storm (flat = no backlog); "
        "unhealed = deletes with no CREATED advisory at all:",
        "",
        "| window | "
        + " | ".join(f"{r.healer} p50 / p99 / max ms | unhealed" for r in results)
        + " |",
        "|---|" + "---:|---:|" * len(results),
    ]
    per = [_latencies(r) for r in results]
    for w in range(int(seconds // window)):
        cells = []
        for lat in per:
            inside = [ms for t, ms in lat if w * window <= t < (w + 1) * window]
            healed = [ms for ms in inside if ms is not None]
            cells.append(
                f"{p50_p99_max(healed).replace(' | ', ' / ')} | {len(inside) - len(healed)}"
            )
        rows.append(f"| {w * window:g}-{(w + 1) * window:g} s | " + " | ".join(cells) + " |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s instead of 30 s")
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=None, help="default 30 (quick 5)")
    parser.add_argument("--pool", type=int, default=2000)
    args = parser.parse_args(argv)
    seconds = args.seconds or (5.0 if args.quick else 30.0)
    command = " ".join(["python -m bench.storm", *(sys.argv[1:] if argv is None else argv)])
    for row in storm_table(args.pool, args.rate, seconds, command):
        print(row, flush=True)


if __name__ == "__main__":
    main()
