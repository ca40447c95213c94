"""Soak: the daemon for N minutes under a random fault every few seconds.

One real nats-server on loopback, the daemon (`kanade-watchdog run`) reaching
it through a stallable TCP relay, a producer publishing to a declared stream
with JetStream acks the whole time. Every few seconds one fault, drawn at
random: broker kill -9 or graceful stop (down for a while), broker frozen,
path stalled or cut, out-of-band deletes (a few, or everything at once),
drift, garbage on the advisory subjects. After each one the run waits until
everything has converged again and times it; every few faults it checks
that a full pass in sync writes nothing. At the end: every acknowledged
message still there, no delete or purge by the daemon (the broker's own API
audit), memory start/end, and SIGTERM still stops the daemon with exit 0.
Prints Markdown tables (docs/RELIABILITY.md records one run); exits 1 if any
invariant broke. A wiped store is left to the fault suite (tests/chaos): it
loses the producer's messages by itself.

Run: make soak   (or: .venv/bin/python -m bench.soak --minutes 10 [--seed 1])
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.figures import MIB, Figure
from tests.chaos.harness import LEDGER, LEDGER_SUBJECT, Scene
from tests.chaos.invariants import Invariants, rss
from tests.chaos.ledger import Producer, api
from tests.chaos.proxy import StallProxy
from tests.daemonproc import DaemonProc
from tests.natsserver import NatsServer

PREFIX = "$JS.EVENT.ADVISORY.STREAM"
QUIET_CHECK_EVERY = 5  # faults between "no writes while in sync" checks
CONVERGE_WITHIN = 60.0


@dataclass
class Soak:
    scene: Scene
    daemon: DaemonProc
    proxy: StallProxy
    producer: Producer
    rng: random.Random
    faults: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    converge: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    quiet_checks: int = 0
    failure: str = ""

    @property
    def targets(self) -> list[str]:
        return [r.stream for r in self.scene.resources if r.stream != LEDGER]

    # --- the faults: each returns True when it cut the daemon's connection ------------

    async def broker_kill(self) -> bool:
        self.scene.server.kill()
        await asyncio.sleep(self.rng.uniform(0.0, 1.0))
        self.scene.server.start()
        return True

    async def broker_stop(self) -> bool:
        self.scene.server.stop()
        await asyncio.sleep(self.rng.uniform(1.0, 5.0))
        self.scene.server.start()
        return True

    async def broker_freeze(self) -> bool:
        proc = self.scene.server.proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)
        await asyncio.sleep(self.rng.uniform(0.3, 2.0))
        os.kill(proc.pid, signal.SIGCONT)
        return False

    async def path_stall(self) -> bool:
        self.proxy.stall()
        await self.delete_some(self.rng.randint(1, 3))
        await asyncio.sleep(self.rng.uniform(1.0, 4.0))
        self.proxy.resume()
        return False

    async def path_cut(self) -> bool:
        await self.proxy.cut()
        return True

    async def delete_some(self, n: int | None = None) -> bool:
        for stream in self.rng.sample(self.targets, n or self.rng.randint(1, 5)):
            await api(self.scene.nc, f"$JS.API.STREAM.DELETE.{stream}")
        return False

    async def delete_all(self) -> bool:
        await asyncio.gather(
            *(api(self.scene.nc, f"$JS.API.STREAM.DELETE.{s}") for s in self.targets)
        )
        return False

    async def drift(self) -> bool:
        plain = [r.stream for r in self.scene.resources if r.kind.value == "stream"]
        for stream in self.rng.sample([s for s in plain if s != LEDGER], 2):
            answer = await api(self.scene.nc, f"$JS.API.STREAM.INFO.{stream}")
            config = dict(answer["config"])
            config["max_age"] = self.rng.choice([3_600, 86_400]) * 10**9
            await api(self.scene.nc, f"$JS.API.STREAM.UPDATE.{stream}", config)
        return False

    async def garbage(self) -> bool:
        nc = self.scene.nc
        for i in range(50):
            stream = self.rng.choice(self.targets)
            payload = self.rng.choice(
                [
                    b"{not json",
                    b"",
                    bytes(self.rng.randrange(256) for _ in range(64)),
                    json.dumps({"type": "x", "stream": stream}).encode(),
                    b"z" * 200_000,
                ]
            )
            verb = self.rng.choice(["DELETED", "UPDATED", "CREATED", "EXPLODED"])
            await nc.publish(f"{PREFIX}.{verb}.{stream if i % 3 else 'NOPE'}", payload)
        await nc.flush()
        return False

    def table(self) -> dict[str, Callable[[], Awaitable[bool]]]:
        return {
            "broker kill -9, restart": self.broker_kill,
            "broker stopped 1-5 s": self.broker_stop,
            "broker frozen 0.3-2 s": self.broker_freeze,
            "path stalled 1-4 s (+deletes)": self.path_stall,
            "path cut": self.path_cut,
            "1-5 resources deleted": self.delete_some,
            "everything deleted": self.delete_all,
            "2 streams drifted": self.drift,
            "50 garbage advisories": self.garbage,
        }


async def run(minutes: float, seed: int, workdir: Path) -> tuple[str, bool]:
    server = NatsServer(workdir).start()
    figure = Figure(scenario="soak")
    scene = await Scene(workdir, server, figure).open()
    proxy = await StallProxy(server.port).start()
    daemon = scene.start(scene.config(url=proxy.url))
    inv = Invariants(scene, daemon)
    producer = await Producer(server.url, LEDGER_SUBJECT).start()
    soak = Soak(scene, daemon, proxy, producer, random.Random(seed))
    started = time.monotonic()
    try:
        await scene.converge(daemon, t0=started, after=0, reconnect=False)
        await producer.wait_acks(50)
        await inv.quiet_when_in_sync()
        inv.baseline()
        faults = soak.table()
        deadline = started + minutes * 60
        n = 0
        while time.monotonic() < deadline:
            kind = soak.rng.choice(list(faults))
            mark = daemon.mark()
            cut = await faults[kind]()
            took = await scene.converge(
                daemon, t0=time.monotonic(), after=mark, reconnect=cut, within=CONVERGE_WITHIN
            )
            soak.faults[kind] += 1
            soak.converge[kind].append(took)
            figure.converged(took)
            missing = await producer.quick_check(scene.nc, LEDGER)
            assert not missing, f"acknowledged messages missing after {kind}: {missing[:10]}"
            n += 1
            if n % QUIET_CHECK_EVERY == 0:
                await inv.quiet_when_in_sync()
                soak.quiet_checks += 1
            await asyncio.sleep(soak.rng.uniform(1.0, 4.0))
        figure.rss_end = rss(daemon)
        await inv.quiet_when_in_sync()
        soak.quiet_checks += 1
    except AssertionError as exc:
        soak.failure = str(exc).splitlines()[0][:300]
    finally:
        await producer.stop()
    if not soak.failure:
        try:
            lost = await producer.verify(scene.nc, LEDGER)
            figure.acked, figure.lost = len(producer.acked), len(lost)
            assert not lost, f"{len(lost)} acknowledged messages lost"
            figure.heals = scene.heals(daemon)
            await inv.no_destructive()
            inv.memory_flat()
            await inv.stops_cleanly()
        except AssertionError as exc:
            soak.failure = str(exc).splitlines()[0][:300]
    figure.seconds = time.monotonic() - started
    report = render(soak, figure, minutes=minutes, seed=seed)
    await proxy.close()
    await scene.close()
    server.kill()
    return report, not soak.failure


def render(soak: Soak, figure: Figure, *, minutes: float, seed: int) -> str:
    all_times = [t for times in soak.converge.values() for t in times]
    worst_kind = max(soak.converge, key=lambda k: max(soak.converge[k]), default="-")
    heals = figure.heals - len(soak.scene.resources)  # the first start's creates aside
    rows = [
        ("duration", f"{figure.seconds / 60:.1f} min (asked {minutes:g}), seed {seed}"),
        ("faults injected", str(sum(soak.faults.values()))),
        ("faults survived (converged again)", str(len(all_times))),
        ("heals (created/updated lines)", str(max(heals, 0))),
        (
            "worst time to converge",
            f"{max(all_times, default=0):.2f} s ({worst_kind})" if all_times else "-",
        ),
        (
            "median time to converge",
            f"{statistics.median(all_times):.3f} s" if all_times else "-",
        ),
        (
            "daemon RSS start -> end",
            f"{figure.rss_start / MIB:.1f} -> {figure.rss_end / MIB:.1f} MiB",
        ),
        ("messages acknowledged", str(figure.acked)),
        ("messages lost", str(figure.lost)),
        ("deletes/purges by the daemon", str(figure.destructive)),
        (
            "writes while in sync",
            f"{figure.writes_in_sync} (in {soak.quiet_checks} full passes checked)",
        ),
        ("daemon exits before SIGTERM", "0" if not soak.failure else "see result"),
        ("result", "PASS" if not soak.failure else f"FAIL: {soak.failure}"),
    ]
    out = ["| soak | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    out += ["| fault | injected | worst converge | median converge |", "|---|---:|---:|---:|"]
    for kind, times in sorted(soak.converge.items(), key=lambda kv: -len(kv[1])):
        out.append(
            f"| {kind} | {soak.faults[kind]} | {max(times):.2f} s | "
            f"{statistics.median(times):.3f} s |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kanade-soak-") as tmp:
        report, ok = asyncio.run(run(args.minutes, args.seed, Path(tmp)))
    print(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
