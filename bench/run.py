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
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from kanade_watchdog.broker.api import Broker
from kanade_watchdog.broker.apply import execute
from kanade_watchdog.config import load as cfg
from kanade_watchdog.core import desired
from kanade_watchdog.core.plan import Action, Observed, decide, plan
from kanade_watchdog.daemon.worker import utcnow
from kanade_watchdog.model.resources import Resource
from kanade_watchdog.model.settings import Config
from tests import jsapi
from tests.audit import ApiAudit
from tests.natsserver import NatsServer

REPO = Path(__file__).resolve().parent.parent
SEED_PERIOD = 0.1  # far shorter than any production timer: flatters the seed
HEAL_WAIT = 30.0  # seconds a heal may take before its row is reported as failed
# After a delete heal, before the re-created stream's directory is checked: the
# broker's removal of the deleted stream lands within a few ms when it races.
LOST_FILES_SETTLE = 0.02
FAILURES: list[str] = []  # every failed row or section, summed up at the end


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
            proc.kill()
            raise RuntimeError(f"{args[2]} did not get ready in 20s")
    else:
        proc.wait()
        raise RuntimeError(f"{args[2]} exited {proc.returncode} before it was ready")
    # Keep reading: a full pipe would block the healer's logging.
    drain = threading.Thread(target=proc.stdout.read, daemon=True)
    drain.start()
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        drain.join(timeout=5)
        proc.stdout.close()


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
    return await jsapi.stream_info(nc, stream, wait=2)


@dataclass
class Row:
    """One (kind, fault) row: the heal times, or why the trials stopped, and
    how many re-created streams lost their files to the broker's removal of
    the deleted one (repaired, untimed, before the next trial)."""

    kind: str
    fault: str
    samples: list[float] = field(default_factory=list)
    error: str | None = None
    lost_files: int = 0


async def _create(nc: Client, res: Resource) -> None:
    body = desired.create_config(res)
    deadline = time.monotonic() + 10
    while "config" not in await _info(nc, res.stream) and time.monotonic() < deadline:
        await jsapi.request(nc, f"$JS.API.STREAM.CREATE.{res.stream}", body, wait=2)
        await asyncio.sleep(0.01)


def _has_files(files: Path) -> bool:
    return files.is_dir()  # one stat on the local store: not worth a thread


async def _restore(nc: Client, res: Resource, files: Path | None) -> None:
    """Put the resource back as a working stream, so the next trial or row
    starts from the declared state: missing (a heal that never came) or
    listed without its directory (a re-create the broker's removal of the
    deleted stream caught up with; publishes to it time out)."""
    await _create(nc, res)
    deadline = time.monotonic() + 10
    while files is not None and not _has_files(files):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{res.stream} still has no files after 10s of repairs")
        await jsapi.request(nc, f"$JS.API.STREAM.DELETE.{res.stream}", wait=2)
        await asyncio.sleep(0.2)  # the healer re-creates it meanwhile, or we do
        await _create(nc, res)
        await asyncio.sleep(0.2)


async def _one_trial(
    nc: Client, queue: asyncio.Queue[str], res: Resource, fault: str, drift: tuple[str, int]
) -> float:
    """One fault, then ms until the resource is back as declared."""
    stream = res.stream
    await asyncio.sleep(0.01)  # let the healer settle its own echo
    while not queue.empty():
        queue.get_nowait()
    if fault == "delete":
        await jsapi.request(nc, f"$JS.API.STREAM.DELETE.{stream}", wait=2)
    else:
        config = dict((await _info(nc, stream))["config"])
        config[drift[0]] = drift[1]
        answer = await jsapi.request(nc, f"$JS.API.STREAM.UPDATE.{stream}", config, wait=2)
        if "error" in answer:
            raise RuntimeError(f"the drift update was refused: {answer['error']}")
    t0 = time.perf_counter()
    while True:
        try:
            subject = await asyncio.wait_for(queue.get(), HEAL_WAIT)
        except TimeoutError:
            raise RuntimeError(f"not healed in {HEAL_WAIT:g}s") from None
        if not subject.endswith("." + stream) or ".DELETED." in subject:
            continue
        info = await _info(nc, stream)
        if "config" not in info:
            continue
        observed = Observed(config=info["config"], state=info["state"])
        if decide(res, observed, utcnow()).action is Action.IN_SYNC:
            return (time.perf_counter() - t0) * 1000


async def heal_trials(
    url: str, conf: Config, trials: int, *, store: Path | None = None
) -> list[Row]:
    """From the observer's delete/update returning until the observer sees the
    resource back with its declared config, per (kind, fault). A row whose
    trial is not healed stops there and says so; the other rows still run.
    With the broker's `store` directory, every re-created stream is also
    checked on disk a moment after its heal."""
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
    rows: list[Row] = []
    for kind, stream in picks.items():
        res = by_stream[stream]
        files = store / "jetstream" / "$G" / "streams" / stream if store else None
        for fault in ("delete", "drift"):
            row = Row(kind, fault)
            rows.append(row)
            for _ in range(trials):
                try:
                    row.samples.append(await _one_trial(nc, queue, res, fault, drift[kind]))
                    if fault == "delete" and files is not None:
                        await asyncio.sleep(LOST_FILES_SETTLE)
                        if not _has_files(files):
                            row.lost_files += 1
                            await _restore(nc, res, files)
                except Exception as exc:  # any failure: the row reports it, the run goes on
                    row.error = f"trial {len(row.samples) + 1}: {exc or type(exc).__name__}"
                    await _restore(nc, res, files)
                    break
    await nc.close()
    return rows


def heal_rows(name: str, rows: list[Row], trials: int) -> list[str]:
    out = []
    for row in rows:
        lost = str(row.lost_files) if row.fault == "delete" else "-"
        if row.error is None:
            out.append(
                f"| {name} | {row.kind} | {row.fault} | {len(row.samples)} | "
                f"{statistics.median(row.samples):.2f} | {pct(row.samples, 99):.2f} | "
                f"{max(row.samples):.2f} | {lost} |"
            )
        else:
            out.append(
                f"| {name} | {row.kind} | {row.fault} | {len(row.samples)} of {trials} | "
                f"FAILED: {row.error} | | | {lost} |"
            )
    return out


def heal_table(trials: int) -> list[str]:
    rows = [
        "| healer | kind | fault | trials | p50 ms | p99 ms | max ms | lost files |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        srv = NatsServer(Path(tmp)).start()
        try:
            conf_path = write_config(Path(tmp) / "w.toml", srv.url)
            conf = cfg.load(str(conf_path))
            healers = {
                "kanade-watchdog": (daemon(conf_path), '"ready'),
                "floor (raw re-create)": (
                    [sys.executable, "-m", "bench.floor", srv.url],
                    "ready",
                ),
                f"seed approach (timer {SEED_PERIOD:g}s)": (
                    [sys.executable, "-m", "bench.seed_timer", str(conf_path), str(SEED_PERIOD)],
                    "ready",
                ),
            }
            for name, (args, ready) in healers.items():
                try:
                    with process(args, ready):
                        time.sleep(0.5)
                        results = asyncio.run(heal_trials(srv.url, conf, trials, store=srv.store))
                except RuntimeError as exc:
                    FAILURES.append(f"{name}: {exc}")
                    rows.append(f"| {name} | | | | FAILED: {exc} | | | |")
                    continue
                FAILURES.extend(f"{name} {r.kind} {r.fault}: {r.error}" for r in results if r.error)
                rows.extend(heal_rows(name, results, trials))
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


def scaled_config(n: int, url: str) -> Config:
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
        try:
            rows = fn()
        except Exception as exc:  # one broken section must not cost the others
            FAILURES.append(f"{title}: {type(exc).__name__}: {exc}")
            rows = [f"FAILED: {type(exc).__name__}: {exc}"]
        for row in rows:
            print(row, flush=True)
    if FAILURES:
        print(f"\n{len(FAILURES)} failed:", *FAILURES, sep="\n- ", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
