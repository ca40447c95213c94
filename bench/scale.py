"""Full passes at scale, a heal during one, and the idle cost at scale
(issue 13, tables 1 and 7).

For each size, a fresh broker gets that many tiny memory streams (created by
`bench.rawclient` with bounded concurrency: the set-up time is reported),
then the daemon and the floor each run against it in turn, declaring exactly
those streams. A round:

1. SIGHUP: the daemon reloads its config and marks everything (a full pass);
   the floor re-reads its configs and runs its own full pass (paged list,
   compare, create the missing);
2. as soon as the broker's API audit shows the healer's first STREAM.LIST
   request (the pass has begun), an observer deletes one declared stream,
   and once the audit shows the last page requested (the pass now decides and
   records), another one;
3. heal during the pass = from a delete returning until the observer, woken
   by the CREATED advisory, reads the stream back with STREAM.INFO; a stream
   deleted while listing may be missing from the list and heal within the
   pass, one deleted once listed heals only by its advisory;
4. the pass ends with the daemon's debug log line `pass (reload): ...` (the
   floor prints a JSON `pass` line); pass time = first STREAM.LIST on the
   audit -> that line.

Both tables raise pass_deadline to 10 minutes (LONG_PASSES). The idle table
runs the daemon at info level with the shipped timers (resync 30 s, jitter
3 s) for a window and reads /proc for CPU time and RSS; the floor runs
beside it with a 30 s resync of its own.

Run: python -m bench.scale [--quick] [--sizes 1000,4000,10000] [--rounds 10]
     [--idle-size 10000] [--idle 60]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from bench import rawclient as rc
from bench.procs import (
    Audit,
    Line,
    Proc,
    client_name,
    cpu_seconds,
    daemon_toml,
    header,
    is_ready,
    p50_p99_max,
    pass_line,
    rss_mib,
    write_json,
)
from tests.natsserver import NatsServer

# A full pass of the daemon at 10,000 streams outlasts the default 30 s
# pass_deadline before the fixes: it would be cut short and retried forever,
# so these tables raise it and report how long a pass really takes.
LONG_PASSES = {"pass_deadline": "10m"}
WITHIN = 1800.0  # default wait for a pass: at 10,000 the first one takes long before any fix


@dataclass
class Rounds:
    healer: str
    n: int
    ready_s: float = 0.0
    list_ms: list[float] = field(default_factory=list)
    pass_ms: list[float] = field(default_factory=list)
    sighup_ms: list[float] = field(default_factory=list)
    heal_ms: list[float] = field(default_factory=list)
    late_ms: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Observer:
    """A plain client: the audit, CREATED advisories, deletes and reads."""

    def __init__(self, nc: Client, audit: Audit) -> None:
        self.nc = nc
        self.audit = audit
        self.created: dict[str, float] = {}

    @classmethod
    async def connect(cls, url: str) -> Observer:
        nc = await nats.connect(url, name="bench-observer13")
        audit = await Audit().start(nc)
        obs = cls(nc, audit)
        await nc.subscribe("$JS.EVENT.ADVISORY.STREAM.CREATED.*", cb=obs._on_created)
        await nc.flush()
        return obs

    async def _on_created(self, msg: Msg) -> None:
        self.created[msg.subject.rsplit(".", 1)[-1]] = time.time()

    async def first(
        self, who: str, prefix: str, *, since: float, within: float, n: int = 1
    ) -> float:
        """When the audit showed the `n`th such request of `who` since `since`."""
        deadline = time.monotonic() + within
        while len(found := self.audit.times(who, prefix, since=since)) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{who}: no {prefix} within {within}s")
            await asyncio.sleep(0.001)
        return found[n - 1]

    async def delete(self, stream: str) -> tuple[float, float]:
        """(sent, returned): a fast healer's CREATED advisory may be read
        before the delete's own answer."""
        sent = time.time()
        answer = await rc.api(self.nc, f"$JS.API.STREAM.DELETE.{stream}", wait=5)
        assert answer.get("success"), answer
        return sent, time.time()

    async def healed(self, stream: str, *, after: float, within: float = 600.0) -> float:
        """When STREAM.INFO first succeeds after the CREATED advisory."""
        deadline = time.monotonic() + within
        while True:
            if self.created.get(stream, 0.0) >= after:
                answer = await rc.api(self.nc, f"$JS.API.STREAM.INFO.{stream}", wait=5)
                if "config" in answer:
                    return time.time()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{stream} not healed within {within}s")
            await asyncio.sleep(0.001)


def _pass_or_deadline(line: Line) -> bool:
    return pass_line("reload")(line) or "exceeded its" in str(line.get("message", ""))


async def _rounds(
    obs: Observer, proc: Proc, res: Rounds, *, rounds: int, floor: bool, within: float
) -> None:
    who = client_name(floor)
    pages = -(-res.n // rc.PAGE)
    for _ in range(rounds):
        await proc.quiet(0.5)
        early, late = (rc.tiny_name(i) for i in random.sample(range(res.n), 2))
        mark = proc.mark()
        t_sig = time.time()
        proc.signal()
        t_list0 = await obs.first(who, "STREAM.LIST", since=t_sig, within=300)
        t_sent, t_del = await obs.delete(early)
        heal = asyncio.ensure_future(obs.healed(early, after=t_sent))
        # The last page asked for: from here on the pass decides and records.
        await obs.first(who, "STREAM.LIST", since=t_sig, within=300, n=pages)
        t_sent2, t_del2 = await obs.delete(late)
        heal2 = asyncio.ensure_future(obs.healed(late, after=t_sent2))
        done = await proc.wait_for(_pass_or_deadline, after=mark, within=within)
        if done.get("level") == "warning":
            raise RuntimeError(str(done.get("message")))
        t_heal, t_heal2 = await heal, await heal2
        res.late_ms.append((t_heal2 - t_del2) * 1000)
        end = float(done.get("ts") or done["_seen"])
        lists = obs.audit.times(who, "STREAM.LIST", since=t_sig)
        if len(lists) >= pages:
            res.list_ms.append((lists[pages - 1] - t_list0) * 1000)
        res.pass_ms.append((end - t_list0) * 1000)
        res.sighup_ms.append((end - t_sig) * 1000)
        res.heal_ms.append((t_heal - t_del) * 1000)


async def _size(n: int, rounds: int, tmp: Path, within: float) -> tuple[float, list[Rounds]]:
    srv = NatsServer(tmp, name=f"scale{n}").start()
    try:
        setup = await nats.connect(srv.url, name="bench-setup13")
        started = time.perf_counter()
        failures = await rc.create_all(setup, [rc.tiny_config(i) for i in range(n)])
        setup_s = time.perf_counter() - started
        await setup.close()
        assert not failures, failures[:3]
        conf = tmp / f"daemon{n}.toml"
        conf.write_text(
            daemon_toml(
                srv.url,
                rc.tiny_toml(n),
                watchdog={"resync_interval": "1h", "resync_jitter": "0s", **LONG_PASSES},
            )
        )
        configs = write_json(tmp / f"floor{n}.json", [rc.tiny_config(i) for i in range(n)])
        obs = await Observer.connect(srv.url)
        out: list[Rounds] = []
        for floor in (False, True):
            res = Rounds("floor (nats-py)" if floor else "kanade-watchdog", n)
            proc = Proc.floor(configs, srv.url) if floor else Proc.daemon(conf)
            try:
                line = await proc.wait_for(is_ready, within=within)
                res.ready_s = float(line.get("ts") or line["_seen"]) - proc.started
                await _rounds(obs, proc, res, rounds=rounds, floor=floor, within=within)
            except RuntimeError as exc:
                res.notes.append(str(exc).splitlines()[0][:160])
            finally:
                proc.stop()
            out.append(res)
        await obs.nc.close()
        return setup_s, out
    finally:
        srv.stop()


def scale_table(
    sizes: list[int], rounds: int, command: str, within: float = WITHIN
) -> Iterator[str]:
    """The table's lines, each size's rows as soon as they are measured."""
    yield from header("Full pass and a heal during it, by declared streams", command)
    yield from [
        "| declared | set-up: create all (64 in flight) | healer | start -> ready | rounds "
        "| list pages ms (median) | pass ms: first list -> done (median / max) "
        "| SIGHUP -> pass done ms (median) | heal ms, deleted while listing: p50 / p99 / max "
        "| heal ms, deleted once listed: p50 / p99 / max |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            setup_s, results = asyncio.run(_size(n, rounds, Path(tmp), within))
        for res in results:
            med = p50_p99_max
            yield (
                f"| {n} | {setup_s:.1f} s | {res.healer} | {res.ready_s:.1f} s | "
                f"{len(res.heal_ms)} | {med(res.list_ms).split(' | ')[0]} | "
                f"{_med_max(res.pass_ms)} | {med(res.sighup_ms).split(' | ')[0]} | "
                f"{med(res.heal_ms).replace(' | ', ' / ')} | "
                f"{med(res.late_ms).replace(' | ', ' / ')} |"
            )
            notes += [f"- {n} {res.healer}: {note}" for note in res.notes]
    yield from (["", *notes] if notes else [])


def _med_max(values: list[float]) -> str:
    if not values:
        return "n/a"
    cells = p50_p99_max(values, "{:.0f}").split(" | ")
    return f"{cells[0]} / {cells[2]}"


# --- idle at scale ------------------------------------------------------------------------


async def _idle(n: int, window: float, tmp: Path) -> list[str]:
    srv = NatsServer(tmp, name=f"idle{n}").start()
    rows: list[str] = []
    try:
        setup = await nats.connect(srv.url, name="bench-setup13")
        assert not await rc.create_all(setup, [rc.tiny_config(i) for i in range(n)])
        await setup.close()
        conf = tmp / "idle.toml"
        # The shipped timers, and room for a slow pass (see LONG_PASSES).
        conf.write_text(daemon_toml(srv.url, rc.tiny_toml(n), watchdog=LONG_PASSES))
        configs = write_json(tmp / "idle.json", [rc.tiny_config(i) for i in range(n)])
        obs = await Observer.connect(srv.url)
        pages = -(-n // rc.PAGE)
        for floor in (False, True):
            name = "floor (nats-py, resync 30s)" if floor else "kanade-watchdog (shipped timers)"
            proc = (
                Proc.floor(configs, srv.url, "--resync", "30")
                if floor
                else Proc.daemon(conf, level="info")
            )
            try:
                await proc.wait_for(is_ready, within=WITHIN)
                await asyncio.sleep(2)
                t0 = time.time()
                cpu0, rss0 = cpu_seconds(proc.pid), rss_mib(proc.pid)
                await asyncio.sleep(window)
                cpu1, rss1 = cpu_seconds(proc.pid), rss_mib(proc.pid)
                lists = len(obs.audit.times(client_name(floor), "STREAM.LIST", since=t0))
                rows.append(
                    f"| {n} | {name} | {window:g} s | {lists / pages:.1f} | "
                    f"{(cpu1 - cpu0) * 1000:.0f} ms | {(cpu1 - cpu0) / window * 100:.2f} % | "
                    f"{rss0:.1f} MiB | {rss1:.1f} MiB |"
                )
            except RuntimeError as exc:
                rows.append(f"| {n} | {name} | {window:g} s | {str(exc)[:120]} | | | | |")
            finally:
                proc.stop()
        await obs.nc.close()
    finally:
        srv.stop()
    return rows


def idle_table(n: int, window: float, command: str) -> list[str]:
    rows = header(f"Idle cost at {n} declared streams (targets <= 80 MiB, <= 0.1 %)", command)
    rows += [
        "| declared | process | window | full passes in it | CPU time | CPU "
        "| RSS start | RSS end |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        rows += asyncio.run(_idle(n, window, Path(tmp)))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 streams, 2 rounds, idle 10 s")
    parser.add_argument("--sizes", default=None, help="default 1000,4000,10000; 0 skips")
    parser.add_argument("--rounds", type=int, default=None, help="default 10")
    parser.add_argument("--idle-size", type=int, default=None, help="default 10000; 0 skips")
    parser.add_argument("--idle", type=float, default=None, help="seconds, default 60")
    parser.add_argument("--within", type=float, default=WITHIN, help="seconds to wait for a pass")
    args = parser.parse_args(argv)
    quick = args.quick
    sizes = [int(s) for s in (args.sizes or ("1000" if quick else "1000,4000,10000")).split(",")]
    rounds = args.rounds or (2 if quick else 10)
    idle_size = args.idle_size if args.idle_size is not None else (1000 if quick else 10000)
    idle = args.idle or (10.0 if quick else 60.0)
    command = " ".join(["python -m bench.scale", *(sys.argv[1:] if argv is None else argv)])
    if sizes != [0]:
        for row in scale_table(sizes, rounds, command, args.within):
            print(row, flush=True)
    if idle_size:
        for row in idle_table(idle_size, idle, command):
            print(row, flush=True)


if __name__ == "__main__":
    main()
