"""Cluster benchmarks: heal latency on a 3-node JetStream cluster, and the time
from a meta-leader kill -9 to every declared resource verified again.

A real 3-node cluster on loopback (`tests.cluster.Cluster`), real
`kanade-watchdog run` subprocesses with the production timers (resync 30 s,
backoff 10 ms doubling), and the small R3 declaration the cluster tests use
(`tests.cluster.R3_RESOURCES`): 3 streams, 2 KV buckets, 1 object store.
Two deployments are measured: one watchdog given all three node URLs, and
one watchdog per broker host (each pointed at its own node, the same
config), the layout docs/CLUSTER.md recommends.

- Heal latency: an observer deletes a resource; from the delete call
  returning until the observer sees it back with its declared replicas and
  fields (after the CREATED advisory, STREAM.INFO answered by the new leader).
  The floor row is the cluster's own cost: no watchdog, the observer sends
  the watchdog's exact create request itself the moment its delete returns.
- Meta-leader loss: kill -9 of the meta leader; the time until the survivors
  agree on a new leader (`/jsz`), until STREAM.INFO answers for every
  declared resource, and until the watchdog that lost its node logs a full
  pass with every declared resource in sync. The node is restarted and the
  cluster healthy again before the next round.

Run: .venv/bin/python -m bench.cluster_bench [--trials 100] [--rounds 5]
Prints Markdown tables.
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from kanade_watchdog.config import load as cfg
from kanade_watchdog.core import desired
from tests import jsapi
from tests.cluster import R3_RESOURCES, R3_STREAMS, Cluster, Node, run_sync
from tests.daemonproc import DaemonProc

RESOURCES = R3_RESOURCES
DECLARED = R3_STREAMS
PICKS = {"stream": "ORDERS", "kv": "KV_config", "object_store": "OBJ_blobs"}
FIELDS = {  # what "back as declared" means, besides R3
    "ORDERS": {"max_bytes": 1024**2},
    "KV_config": {"max_bytes": 1024**2, "max_msgs_per_subject": 5},
    "OBJ_blobs": {"max_bytes": 4 * 1024**2},
}
VERIFIED = f"{len(DECLARED)} looked at, {len(DECLARED)} in sync"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def write_config(path: Path, servers: list[str], name: str) -> Path:
    """Production timers (the defaults), this watchdog's own connection name."""
    path.write_text(
        "[nats]\n"
        f"servers = {json.dumps(servers)}\n"
        f"name = {json.dumps(name)}\n"
        'reconnect_wait = "100ms"\n' + RESOURCES
    )
    return path


def start_watchdogs(workdir: Path, cluster: Cluster, *, per_node: bool) -> list[DaemonProc]:
    if per_node:
        layout = [(f"wd-{n.name}", [n.url]) for n in cluster.nodes]
    else:
        layout = [("wd-all", cluster.urls)]
    procs = [
        DaemonProc(write_config(workdir / f"{name}.toml", servers, name)).start()
        for name, servers in layout
    ]
    try:
        run_sync(_ready(procs))
    except BaseException:
        for proc in procs:
            proc.close()
        raise
    return procs


async def _ready(procs: list[DaemonProc]) -> None:
    for proc in procs:
        await proc.wait_for(lambda line: line.get("action") == "ready", within=60)


def _back(doc: dict[str, Any], stream: str) -> bool:
    config = doc.get("config")
    if not isinstance(config, dict) or config.get("num_replicas") != 3:
        return False
    if not (doc.get("cluster") or {}).get("leader"):
        return False
    return all(config.get(k) == v for k, v in FIELDS[stream].items())


# --- heal latency ------------------------------------------------------------------------


async def heal_trials(cluster: Cluster, trials: int) -> dict[str, list[float]]:
    """Per kind: ms from the delete returning to the resource back as declared."""
    nc = await cluster.connect(name="bench-observer")
    created: asyncio.Queue[str] = asyncio.Queue()

    async def on_created(msg: Msg) -> None:
        created.put_nowait(msg.subject.rsplit(".", 1)[1])

    await nc.subscribe("$JS.EVENT.ADVISORY.STREAM.CREATED.*", cb=on_created)
    out: dict[str, list[float]] = {}
    try:
        for kind, stream in PICKS.items():
            samples: list[float] = []
            for _ in range(trials):
                await asyncio.sleep(0.02)  # let the watchdogs settle their own echo
                while not created.empty():
                    created.get_nowait()
                answer = await jsapi.request(nc, f"$JS.API.STREAM.DELETE.{stream}", wait=5)
                if "error" in answer:
                    raise RuntimeError(f"delete {stream}: {answer['error']}")
                t0 = time.perf_counter()
                while True:
                    try:
                        name = await asyncio.wait_for(created.get(), 30)
                    except TimeoutError:
                        raise RuntimeError(f"{stream}: not re-created within 30s") from None
                    if name == stream:
                        break
                await _wait_back(nc, stream)
                samples.append((time.perf_counter() - t0) * 1000)
            out[kind] = samples
    finally:
        await nc.close()
    return out


async def _wait_back(nc: Client, stream: str) -> None:
    """Until the new group's leader (elected right after the create) answers
    STREAM.INFO with the declared replicas and fields."""
    while True:
        try:
            doc = await jsapi.request(nc, f"$JS.API.STREAM.INFO.{stream}", wait=0.5)
        except TimeoutError:
            continue
        if _back(doc, stream):
            return
        await asyncio.sleep(0.001)


async def floor_trials(cluster: Cluster, conf_path: Path, trials: int) -> dict[str, list[float]]:
    """The floor: no watchdog; the observer itself sends the watchdog's exact
    create request as soon as its delete returns, then waits the same way."""
    by_stream = cfg.load(str(conf_path)).by_stream()
    nc = await cluster.connect(name="bench-floor")
    out: dict[str, list[float]] = {}
    try:
        for kind, stream in PICKS.items():
            body = json.dumps(desired.create_config(by_stream[stream])).encode()
            samples: list[float] = []
            for _ in range(trials):
                await asyncio.sleep(0.02)
                answer = await jsapi.request(nc, f"$JS.API.STREAM.DELETE.{stream}", wait=5)
                if "error" in answer:
                    raise RuntimeError(f"delete {stream}: {answer['error']}")
                t0 = time.perf_counter()
                answer = await jsapi.request(nc, f"$JS.API.STREAM.CREATE.{stream}", body, wait=5)
                if "error" in answer:
                    raise RuntimeError(f"create {stream}: {answer['error']}")
                await _wait_back(nc, stream)
                samples.append((time.perf_counter() - t0) * 1000)
            out[kind] = samples
    finally:
        await nc.close()
    return out


# --- meta-leader loss ----------------------------------------------------------------------


async def _all_answer(nc: Client) -> None:
    """Until STREAM.INFO answers for every declared resource."""
    while True:
        try:
            docs = await asyncio.gather(
                *(jsapi.request(nc, f"$JS.API.STREAM.INFO.{s}", wait=0.5) for s in DECLARED)
            )
        except TimeoutError:
            continue
        if all("config" in d for d in docs):
            return
        await asyncio.sleep(0.01)


async def meta_loss_round(cluster: Cluster, procs: dict[str, DaemonProc]) -> tuple[str, ...]:
    """One kill -9 of the meta leader; (node, elected s, API back s, verified s)."""
    meta = await cluster.await_meta_leader()
    survivor = next(n for n in cluster.nodes if n is not meta)
    nc = await cluster.connect(name="bench-observer", servers=[survivor.url])
    watchdog = procs[f"wd-{meta.name}"]
    mark = watchdog.mark()
    try:
        t0 = time.monotonic()
        meta.kill()
        api_back = asyncio.create_task(_all_answer(nc))
        await cluster.await_meta_leader(not_=meta, within=60)
        elected = time.monotonic() - t0
        await asyncio.wait_for(api_back, 60)
        answered = time.monotonic() - t0
        await watchdog.wait_for(
            lambda line: VERIFIED in str(line.get("message", "")), after=mark, within=120
        )
        verified = time.monotonic() - t0
    finally:
        await nc.close()
    await _host_back(cluster, meta, procs)
    return meta.name, f"{elected:.1f} s", f"{answered:.1f} s", f"{verified:.1f} s"


async def _host_back(cluster: Cluster, node: Node, procs: dict[str, DaemonProc]) -> None:
    """The host reboots: its node comes back and caught up, then its watchdog
    restarts pointed at it again (so each round's meta leader has one)."""
    node.start()
    await cluster.wait_healthy(within=120)
    name = f"wd-{node.name}"
    old = procs[name]
    old.close()
    procs[name] = DaemonProc(old.config).start()
    await _ready([procs[name]])


# --- tables ---------------------------------------------------------------------------------


def heal_table(trials: int) -> list[str]:
    rows = [
        "| watchdogs | kind | trials | p50 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for per_node, label in ((False, "1 (all node URLs)"), (True, "3 (one per node)")):
        with tempfile.TemporaryDirectory() as tmp:
            cluster = Cluster(Path(tmp))
            procs: list[DaemonProc] = []
            results: dict[str, dict[str, list[float]]] = {}
            try:
                cluster.start()
                if not per_node:  # the floor first, while no watchdog runs
                    conf_path = write_config(Path(tmp) / "apply.toml", cluster.urls, "bench")
                    _apply(conf_path)
                    results["none (floor: raw re-create)"] = run_sync(
                        floor_trials(cluster, conf_path, trials)
                    )
                procs = start_watchdogs(Path(tmp), cluster, per_node=per_node)
                results[label] = run_sync(heal_trials(cluster, trials))
            finally:
                for proc in procs:
                    proc.close()
                cluster.close()
        for who, by_kind in results.items():
            for kind, samples in by_kind.items():
                rows.append(
                    f"| {who} | {kind} | {len(samples)} | {statistics.median(samples):.1f} | "
                    f"{pct(samples, 99):.1f} | {max(samples):.1f} |"
                )
    return rows


def _apply(conf_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kanade_watchdog", "apply", "--config", str(conf_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"apply failed: {done.stdout}{done.stderr}")


def meta_loss_table(rounds: int) -> list[str]:
    rows = [
        "| round | killed | new meta leader | every resource answers | verified by its watchdog |",
        "|---:|---|---:|---:|---:|",
    ]
    verified: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        procs: list[DaemonProc] = []
        try:
            cluster.start()
            procs = start_watchdogs(Path(tmp), cluster, per_node=True)
            by_name = {proc.config.stem: proc for proc in procs}
            for i in range(rounds):
                node, elected, answered, seconds = run_sync(meta_loss_round(cluster, by_name))
                verified.append(float(seconds.split()[0]))
                rows.append(f"| {i + 1} | {node} | {elected} | {answered} | {seconds} |")
        finally:
            for proc in procs:
                proc.close()
            cluster.close()
    rows.append(
        f"| median / max | | | | {statistics.median(verified):.1f} s / {max(verified):.1f} s |"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=100, help="deletes per kind and layout")
    parser.add_argument("--rounds", type=int, default=5, help="meta-leader kills")
    args = parser.parse_args()
    print(f"<!-- {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores, 3-node cluster -->")
    sections: list[tuple[str, Callable[[], list[str]]]] = [
        (
            "Heal latency on a 3-node cluster (observer: delete returned -> "
            "resource back R3 as declared)",
            lambda: heal_table(args.trials),
        ),
        (
            "Meta-leader kill -9 -> all declared resources verified "
            "(one watchdog per node, production timers)",
            lambda: meta_loss_table(args.rounds),
        ),
    ]
    for title, table in sections:
        print(f"\n### {title}\n", flush=True)
        for row in table():
            print(row, flush=True)


if __name__ == "__main__":
    main()
