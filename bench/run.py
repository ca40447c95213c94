"""Benchmarks: heal latency, steady-state cost, scale, recovery, idle footprint.

Everything runs against a real local nats-server, side by side in one run:
the watchdog daemon (`kanade-watchdog run`), the floor (`bench.floor`, a raw
advisory-driven re-creator) and the seed's approach (`bench.seed_timer`,
create-or-update of everything on a timer). Prints Markdown tables.

Run: make bench   (or: .venv/bin/python -m bench.run [--trials 300] [--idle 60])
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from kanade_watchdog import config as cfg
from kanade_watchdog.apply import execute
from kanade_watchdog.broker import Broker
from kanade_watchdog.plan import Action, Observed, decide, plan
from kanade_watchdog.worker import utcnow
from tests.audit import ApiAudit
from tests.natsserver import NatsServer

REPO = Path(__file__).resolve().parent.parent
SEED_PERIOD = 0.1  # far shorter than any production timer: flatters the seed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def write_config(path: Path, url: str, *, resync: str = "30s", extra: str = "") -> Path:
    text = (REPO / "config.toml").read_text().replace("nats://127.0.0.1:4222", url)
    text = text.replace('resync_interval = "30s"', f'resync_interval = "{resync}"')
    path.write_text(text + extra)
    return path


@contextmanager
def process(args: list[str], ready: str) -> Iterator[subprocess.Popen[str]]:
    """A healer subprocess, started and waited for until it prints `ready`."""
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    for line in proc.stdout:
        if ready in line:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{args} did not get ready")
    # Keep reading: a full pipe would block the healer's logging.
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def daemon(conf: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kanade_watchdog",
        "run",
        "--config",
        str(conf),
        "--log-format",
        "json",
    ]


# --- heal latency ------------------------------------------------------------------


async def _info(nc: Client, stream: str) -> dict[str, Any]:
    msg = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=2)
    doc: dict[str, Any] = json.loads(msg.data)
    return doc


async def heal_trials(
    url: str, conf: cfg.Config, trials: int
) -> dict[tuple[str, str], list[float]]:
    """From the observer's delete/update returning until the observer sees the
    resource back with its declared config, per (kind, fault)."""
    picks = {"stream": "RESULTS", "kv": "KV_jobs", "object_store": "OBJ_result_output"}
    drift = {
        "stream": ("max_age", 86400 * 10**9),
        "kv": ("max_msgs_per_subject", 2),
        "object_store": ("max_bytes", 512 * 1024**2),
    }
    by_stream = conf.by_stream()
    nc = await nats.connect(url, name="bench-observer")
    queue: asyncio.Queue[str] = asyncio.Queue()

    async def on_adv(msg: Any) -> None:
        queue.put_nowait(msg.subject)

    await nc.subscribe("$JS.EVENT.ADVISORY.STREAM.*.*", cb=on_adv)
    out: dict[tuple[str, str], list[float]] = {}
    for kind, stream in picks.items():
        res = by_stream[stream]
        for fault in ("delete", "drift"):
            samples: list[float] = []
            for _ in range(trials):
                await asyncio.sleep(0.01)  # let the healer settle its own echo
                while not queue.empty():
                    queue.get_nowait()
                if fault == "delete":
                    await nc.request(f"$JS.API.STREAM.DELETE.{stream}", b"", timeout=2)
                else:
                    config = dict((await _info(nc, stream))["config"])
                    field, value = drift[kind]
                    config[field] = value
                    answer = await nc.request(
                        f"$JS.API.STREAM.UPDATE.{stream}", json.dumps(config).encode(), timeout=2
                    )
                    assert b'"error"' not in answer.data, answer.data
                t0 = time.perf_counter()
                while True:
                    try:
                        subject = await asyncio.wait_for(queue.get(), 30)
                    except TimeoutError:
                        raise RuntimeError(f"{stream} {fault}: not healed in 30s") from None
                    if not subject.endswith("." + stream) or ".DELETED." in subject:
                        continue
                    info = await _info(nc, stream)
                    if "config" not in info:
                        continue
                    observed = Observed(config=info["config"], state=info["state"])
                    if decide(res, observed, utcnow()).action is Action.IN_SYNC:
                        samples.append((time.perf_counter() - t0) * 1000)
                        break
            out[(kind, fault)] = samples
    await nc.close()
    return out


def heal_table(trials: int) -> list[str]:
    rows = [
        "| healer | kind | fault | trials | p50 ms | p99 ms | max ms |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        srv = NatsServer(Path(tmp)).start()
        try:
            conf_path = write_config(Path(tmp) / "w.toml", srv.url)
            conf = cfg.load(str(conf_path))
            healers = {
                "kanade-watchdog": (daemon(conf_path), '"ready'),
                "floor (raw re-create)": (
                    [sys.executable, "-m", "bench.floor", str(conf_path)],
                    "ready",
                ),
                f"seed approach (timer {SEED_PERIOD:g}s)": (
                    [sys.executable, "-m", "bench.seed_timer", str(conf_path), str(SEED_PERIOD)],
                    "ready",
                ),
            }
            for name, (args, ready) in healers.items():
                with process(args, ready):
                    time.sleep(0.5)
                    try:
                        results = asyncio.run(heal_trials(srv.url, conf, trials))
                    except RuntimeError as exc:
                        raise RuntimeError(f"{name}: {exc}") from None
                for (kind, fault), samples in results.items():
                    rows.append(
                        f"| {name} | {kind} | {fault} | {len(samples)} | "
                        f"{statistics.median(samples):.2f} | {pct(samples, 99):.2f} | "
                        f"{max(samples):.2f} |"
                    )
        finally:
            srv.stop()
    return rows


# --- steady state ------------------------------------------------------------------


async def _count_writes(url: str, name: str, seconds: float) -> tuple[int, int]:
    nc = await nats.connect(url)
    audit = await ApiAudit(nc, client_name=name).start()
    await asyncio.sleep(seconds)
    await audit.settle()
    await nc.close()
    return audit.writes, audit.count("STREAM.LIST")


def steady_table() -> list[str]:
    rows = [
        "| healer | window | resyncs | writes | writes per resync |",
        "|---|---:|---:|---:|---:|",
    ]
    window = 5.0
    with tempfile.TemporaryDirectory() as tmp:
        srv = NatsServer(Path(tmp)).start()
        try:
            conf_path = write_config(Path(tmp) / "w.toml", srv.url, resync="250ms")
            with process(daemon(conf_path), '"ready'):
                time.sleep(0.5)
                writes, lists = asyncio.run(_count_writes(srv.url, "kanade-watchdog", window))
            rows.append(
                f"| kanade-watchdog (resync 250ms) | {window:g}s | {lists} | {writes} | "
                f"{writes / max(lists, 1):.1f} |"
            )
            seed = [sys.executable, "-m", "bench.seed_timer", str(conf_path), "0.25"]
            with process(seed, "ready"):
                writes, _ = asyncio.run(_count_writes(srv.url, "bench-seed", window))
            ticks = round(window / 0.25)
            rows.append(
                f"| seed approach (timer 250ms) | {window:g}s | ~{ticks} | {writes} | "
                f"{writes / ticks:.1f} |"
            )
        finally:
            srv.stop()
    return rows


# --- scale ---------------------------------------------------------------------------


def scaled_config(n: int, url: str) -> cfg.Config:
    doc: dict[str, Any] = {"nats": {"servers": [url]}, "streams": {}}
    for i in range(n):
        doc["streams"][f"S{i:05d}"] = {
            "subjects": [f"s{i}.>"],
            "max_age": "1d",
            "max_bytes": "1MiB",
            "storage": "memory",
        }
    return cfg.parse(doc, f"<{n} streams>")


async def _scale(url: str, n: int) -> tuple[int, float, int, float]:
    conf = scaled_config(n, url)
    nc = await nats.connect(url)
    broker = Broker(nc, timeout=30)
    now = utcnow()
    for d in plan(conf.resources, await broker.list_streams(), now):
        await execute(broker, d, conf.resources, now)
    # ours: one full verification = paged list + pure plan
    broker.requests.clear()
    t0 = time.perf_counter()
    decisions = plan(conf.resources, await broker.list_streams(), utcnow())
    ours_s = time.perf_counter() - t0
    assert all(d.action is Action.IN_SYNC for d in decisions)
    ours_requests = sum(broker.requests.values())
    # the seed: create-or-update each resource in turn
    from bench.seed_timer import create_or_update

    t0 = time.perf_counter()
    for res in conf.resources:
        await create_or_update(nc, res)
    seed_s = time.perf_counter() - t0
    await nc.close()
    return ours_requests, ours_s, 2 * n, seed_s


def scale_table(sizes: list[int]) -> list[str]:
    rows = [
        "| declared | watchdog requests | watchdog time | seed requests | seed time | speed-up |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            srv = NatsServer(Path(tmp)).start()
            try:
                ours_r, ours_s, seed_r, seed_s = asyncio.run(_scale(srv.url, n))
            finally:
                srv.stop()
        rows.append(
            f"| {n} | {ours_r} | {ours_s * 1000:.1f} ms | {seed_r} | "
            f"{seed_s * 1000:.0f} ms | {seed_s / ours_s:.0f}x |"
        )
    return rows


# --- recovery after a wiped restart ---------------------------------------------------------


async def _all_back(url: str, streams: set[str], deadline: float) -> float:
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.05)
    broker = Broker(nc, timeout=2)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < deadline:
        if streams <= set(await broker.list_streams()):
            break
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - t0
    await nc.close()
    return elapsed


def wipe_table(rounds: int) -> list[str]:
    samples: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        srv = NatsServer(Path(tmp)).start()
        try:
            conf_path = write_config(Path(tmp) / "w.toml", srv.url, extra="")
            text = conf_path.read_text().replace(
                'request_timeout = "2s"', 'request_timeout = "2s"\nreconnect_wait = "100ms"'
            )
            conf_path.write_text(text)
            streams = set(cfg.load(str(conf_path)).by_stream())
            with process(daemon(conf_path), '"ready'):
                for _ in range(rounds):
                    srv.kill()
                    srv.wipe_store()
                    srv.start()  # returns once the port answers
                    samples.append(asyncio.run(_all_back(srv.url, streams, 30)) * 1000)
        finally:
            srv.stop()
    return [
        "| rounds | p50 ms | max ms | reconnect_wait |",
        "|---:|---:|---:|---|",
        f"| {rounds} | {statistics.median(samples):.0f} | {max(samples):.0f} | 100ms |",
    ]


# --- idle footprint --------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def idle_table(seconds: float) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        srv = NatsServer(Path(tmp)).start()
        try:
            conf_path = write_config(Path(tmp) / "w.toml", srv.url)
            with process(daemon(conf_path), '"ready') as proc:
                time.sleep(1)
                cpu0, rss0 = _cpu_seconds(proc.pid), _rss_mib(proc.pid)
                time.sleep(seconds)
                cpu1, rss1 = _cpu_seconds(proc.pid), _rss_mib(proc.pid)
        finally:
            srv.stop()
    return [
        "| idle window | CPU time | CPU % | RSS start | RSS end |",
        "|---:|---:|---:|---:|---:|",
        f"| {seconds:g}s | {(cpu1 - cpu0) * 1000:.0f} ms | {(cpu1 - cpu0) / seconds * 100:.2f}% |"
        f" {rss0:.1f} MiB | {rss1:.1f} MiB |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--sizes", default="25,250,2500")
    parser.add_argument("--wipes", type=int, default=10)
    args = parser.parse_args()
    sections: list[tuple[str, Callable[[], list[str]]]] = [
        (
            "Heal latency (observer: fault call returned -> resource back as declared)",
            lambda: heal_table(args.trials),
        ),
        ("Steady state: broker writes per resync while in sync", steady_table),
        (
            "One full verification at scale (in sync)",
            lambda: scale_table([int(s) for s in args.sizes.split(",")]),
        ),
        (
            "Broker kill -9 + wiped store -> all 25 back (from the broker answering again)",
            lambda: wipe_table(args.wipes),
        ),
        ("Idle footprint of the daemon (25 resources, resync 30s)", lambda: idle_table(args.idle)),
    ]
    print(f"<!-- {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores -->")
    for title, fn in sections:
        print(f"\n### {title}\n", flush=True)
        for row in fn():
            print(row, flush=True)


if __name__ == "__main__":
    main()
