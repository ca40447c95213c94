"""Heal latency on a quiet broker (issue 13, table 5), black box.

The same measurement as `bench.run`'s heal table, without importing
kanade_watchdog: the daemon (the repo's config.toml as shipped, info level)
and the floor (`bench.rawclient floor`, which re-creates on DELETED and
reverts on UPDATED after one read) each get TRIALS faults per row on a
broker of their own. Per trial an observer deletes the resource's stream or
changes one declared field, then waits for the healer's advisory for that
stream and reads it back (STREAM.INFO); healed = it exists and the field has
its declared value again. Time = from the fault's request returning.

The daemon is reloaded (SIGHUP, untimed) after every GUARD_EVERY drifts of a
stream: its write guard holds a resource updated more than 5 times a minute.
A fault the broker itself refuses is retried after 20 ms and not counted;
after 50 refusals in a row the row is cut short with a note. (nats-server
2.15.1 can lose the store directory of a stream re-created right after its
delete: every later update of it then fails with 10069 "meta.inf.tmp: no
such file or directory" until the broker restarts.)

Run: python -m bench.heal [--quick] [--trials 300]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from bench import rawclient as rc
from bench.procs import (
    Proc,
    header,
    is_ready,
    p50_p99_max,
    repo_config_at,
    repo_resources,
    write_json,
)
from tests.natsserver import NatsServer

# stream -> (kind, drifted field, drifted value)
PICKS: dict[str, tuple[str, str, int]] = {
    "RESULTS": ("stream", "max_age", 86400 * 10**9),
    "KV_jobs": ("kv", "max_msgs_per_subject", 2),
    "OBJ_result_output": ("object_store", "max_bytes", 512 * 1024**2),
}


REFUSALS = 50  # consecutive refused faults: the broker is stuck, not racing
# The daemon's write guard holds a resource updated more than 5 times in 60 s
# (another writer changing it back each time is a tug of war, not drift), and
# a reload resets it: the daemon is reloaded after every GUARD_EVERY drifts of
# a stream, outside the timed part, so each drift is measured as the first
# few an operator's broker would see.
GUARD_EVERY = 4


class Watcher:
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    async def start(self) -> Watcher:
        async def on_adv(msg: Msg) -> None:
            self.queue.put_nowait(msg.subject)

        await self.nc.subscribe("$JS.EVENT.ADVISORY.STREAM.*.*", cb=on_adv)
        await self.nc.flush()
        return self

    def drain(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()

    async def fault(self, stream: str, kind: str) -> str:
        """Delete or drift `stream`: '' when done, else the broker's refusal."""
        if kind == "delete":
            answer = await rc.api(self.nc, f"$JS.API.STREAM.DELETE.{stream}", wait=2)
        else:
            info = await rc.api(self.nc, f"$JS.API.STREAM.INFO.{stream}", wait=2)
            if "config" not in info:
                return str(info.get("error", "no config"))
            _, name, value = PICKS[stream]
            config = {**info["config"], name: value}
            answer = await rc.api(self.nc, f"$JS.API.STREAM.UPDATE.{stream}", config, wait=2)
        error = answer.get("error")
        return "" if not error else f"{error.get('err_code')} {error.get('description')}"

    async def healed(self, stream: str, want: Any, field: str) -> None:
        while True:
            subject = await asyncio.wait_for(self.queue.get(), 30)
            if not subject.endswith("." + stream) or ".DELETED." in subject:
                continue
            info = await rc.api(self.nc, f"$JS.API.STREAM.INFO.{stream}", wait=2)
            if info.get("config", {}).get(field) == want:
                return


async def _reload(proc: Proc) -> None:
    """SIGHUP, and the reload's own pass left to settle."""
    mark = proc.mark()
    proc.signal()
    await proc.wait_for(lambda line: line.get("action") == "reloaded", within=30, after=mark)
    await asyncio.sleep(0.2)


async def _trials(
    url: str, trials: int, notes: list[str], daemon: Proc | None
) -> dict[tuple[str, str], list[float]]:
    declared = {c["name"]: c for c in rc.declared_configs(repo_resources())}
    nc = await nats.connect(url, name="bench-observer13")
    watcher = await Watcher(nc).start()
    out: dict[tuple[str, str], list[float]] = {}
    for stream, (kind, field, _) in PICKS.items():
        want = declared[stream][field]
        # Drift first: a delete and fast re-create can leave the broker unable
        # to update that stream at all (see the module docstring).
        for fault in ("drift", "delete"):
            samples: list[float] = []
            refused = 0
            while len(samples) < trials:
                if daemon is not None and fault == "drift" and len(samples) % GUARD_EVERY == 0:
                    await _reload(daemon)
                await asyncio.sleep(0.01)  # the healer's own echo settles
                watcher.drain()
                if error := await watcher.fault(stream, fault):
                    refused += 1
                    if refused == REFUSALS:
                        notes.append(
                            f"{stream} {fault}: the broker refused it {refused} times "
                            f"in a row, row cut short: {error}"
                        )
                        break
                    await asyncio.sleep(0.02)
                    continue
                refused = 0
                t0 = time.perf_counter()
                await watcher.healed(stream, want, field)
                samples.append((time.perf_counter() - t0) * 1000)
            out[(kind, fault)] = samples
    await nc.close()
    return out


def heal_table(trials: int, command: str) -> list[str]:
    rows = header(f"Heal latency on a quiet broker ({trials} trials per row)", command)
    rows += ["| healer | kind | fault | trials | p50 ms | p99 ms | max ms |"]
    rows += ["|---|---|---|---:|---:|---:|---:|"]
    notes: list[str] = []
    for floor in (False, True):
        with tempfile.TemporaryDirectory() as name:
            tmp = Path(name)
            srv = NatsServer(tmp).start()
            try:
                if floor:
                    configs = write_json(tmp / "floor.json", rc.declared_configs(repo_resources()))
                    proc = Proc.floor(configs, srv.url)
                else:
                    conf = tmp / "daemon.toml"
                    conf.write_text(repo_config_at(srv.url))
                    proc = Proc.daemon(conf, level="info")
                try:
                    asyncio.run(proc.wait_for(is_ready, within=60))
                    time.sleep(0.5)
                    daemon = None if floor else proc
                    results = asyncio.run(_trials(srv.url, trials, notes, daemon))
                finally:
                    proc.stop()
            finally:
                srv.stop()
        who = "floor (nats-py)" if floor else "kanade-watchdog"
        for (kind, fault), samples in results.items():
            rows.append(
                f"| {who} | {kind} | {fault} | {len(samples)} | {p50_p99_max(samples, '{:.2f}')} |"
            )
        notes[:] = [n if n.startswith("- ") else f"- {who}: {n}" for n in notes]
    return rows + (["", *notes] if notes else [])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 trials per row")
    parser.add_argument("--trials", type=int, default=None, help="default 300")
    args = parser.parse_args(argv)
    trials = args.trials or (30 if args.quick else 300)
    command = " ".join(["python -m bench.heal", *(sys.argv[1:] if argv is None else argv)])
    for row in heal_table(trials, command):
        print(row, flush=True)


if __name__ == "__main__":
    main()
