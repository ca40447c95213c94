"""Export at scale: how long `kanade-watchdog export` takes on a broker holding
thousands of streams, and how many list requests it sends.

A real local nats-server is filled with N streams by raw API requests (80 %
plain streams with a few non-default fields, 15 % KV buckets and 5 % object
stores in their ADR shapes, every tenth with a field the config cannot
declare). Then, per run:
- fetch: connect and page through STREAM.LIST in-process (requests counted
  by the client and, independently, on the broker's API audit);
- build + render: the pure part, infos -> TOML text;
- CLI: `python -m kanade_watchdog export -o FILE` as a subprocess, wall time
  including interpreter start-up;
- and, once, `plan` on the exported file must exit 0 (in sync).

Run: .venv/bin/python -m bench.export_bench [--streams 2000] [--runs 5]
Prints a Markdown table (medians over the runs).
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from kanade_watchdog.commands.export import fetch
from kanade_watchdog.core.export import collect
from kanade_watchdog.model.settings import NatsSettings
from kanade_watchdog.report.declaration import render
from tests.audit import ApiAudit
from tests.natsserver import NatsServer

REPO = Path(__file__).resolve().parent.parent
SEC = 10**9
BATCH = 100  # concurrent creates while filling the broker


def stream_config(i: int, total: int) -> dict[str, Any]:
    if i < total * 15 // 100:
        bucket = f"kv{i}"
        return {
            "name": f"KV_{bucket}",
            "subjects": [f"$KV.{bucket}.>"],
            "max_msgs_per_subject": 1 + i % 5,
            "discard": "new",
            "allow_rollup_hdrs": True,
            "deny_delete": True,
            "allow_direct": True,
            "max_age": (i % 3) * 3600 * SEC,
        }
    if i < total * 20 // 100:
        bucket = f"obj{i}"
        return {
            "name": f"OBJ_{bucket}",
            "subjects": [f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"],
            "discard": "new",
            "allow_rollup_hdrs": True,
            "allow_direct": True,
            "max_bytes": (1 + i % 4) * 1024**2,
        }
    config: dict[str, Any] = {
        "name": f"S{i:05d}",
        "subjects": [f"s{i}.>"],
        "max_age": (1 + i % 90) * 86400 * SEC,
        "max_msgs": 1000 + i,
        "description": f"stream number {i}",
        "metadata": {"owner": f"team{i % 7}"},
    }
    if i % 10 == 0:
        config["allow_msg_ttl"] = True  # reported as left out
    return config


async def fill(nc: Client, total: int) -> None:
    async def create(i: int) -> None:
        config = stream_config(i, total)
        msg = await nc.request(
            f"$JS.API.STREAM.CREATE.{config['name']}", json.dumps(config).encode(), timeout=30
        )
        answer = json.loads(msg.data)
        if "error" in answer:
            raise RuntimeError(f"{config['name']}: {answer['error']}")

    for start in range(0, total, BATCH):
        await asyncio.gather(*(create(i) for i in range(start, min(start + BATCH, total))))


def run_cli(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "kanade_watchdog", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
        timeout=120,
    )
    return time.perf_counter() - started, proc


async def measure(total: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        srv = NatsServer(workdir, jetstream_conf="max_file_store: 64GB").start()
        try:
            nc = await nats.connect(srv.url)
            started = time.perf_counter()
            await fill(nc, total)
            fill_s = time.perf_counter() - started
            settings = NatsSettings(servers=(srv.url,))
            fetch_s, render_s, cli_s, requests, audited = [], [], [], [], []
            out = workdir / "export.toml"
            absent = str(workdir / "absent.toml")
            for _ in range(runs):
                audit = await ApiAudit(nc, client_name=settings.name).start()
                t0 = time.perf_counter()
                held, counted = await fetch(settings)
                t1 = time.perf_counter()
                export = collect(held)
                text = render(export, settings=settings, now=datetime.now(UTC))
                t2 = time.perf_counter()
                fetch_s.append(t1 - t0)
                render_s.append(t2 - t1)
                requests.append(counted["list"])
                out.unlink(missing_ok=True)
                wall, proc = await asyncio.to_thread(
                    run_cli, "export", "--server", srv.url, "-o", str(out), "--config", absent
                )
                if proc.returncode != 0:
                    raise RuntimeError(proc.stderr)
                cli_s.append(wall)
                await audit.settle()
                await audit.stop()
                audited.append(audit.count("STREAM.LIST"))
            plan_s, plan = await asyncio.to_thread(run_cli, "plan", "--config", str(out))
            if plan.returncode != 0:
                raise RuntimeError(f"plan on the export is not in sync:\n{plan.stdout[-2000:]}")
            await nc.close()
        finally:
            srv.stop()
    return {
        "streams": total,
        "exported": len(export.entries),
        "fill_s": fill_s,
        "list_requests": max(requests),
        "audited_list_requests": max(audited) // 2,  # the in-process fetch + the CLI
        "fetch_ms": statistics.median(fetch_s) * 1000,
        "render_ms": statistics.median(render_s) * 1000,
        "cli_s": statistics.median(cli_s),
        "plan_s": plan_s,
        "kib": len(text.encode()) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, nargs="+", default=[2000])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"<!-- {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores -->")
    print(
        "| streams | list requests (client / broker audit) | fetch ms | build + render ms "
        "| CLI export s (wall, with start-up) | plan on the export s | output KiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for total in args.streams:
        row = asyncio.run(measure(total, args.runs))
        print(
            f"| {row['streams']} | {row['list_requests']} / {row['audited_list_requests']} "
            f"| {row['fetch_ms']:.0f} | {row['render_ms']:.0f} | {row['cli_s']:.2f} "
            f"| {row['plan_s']:.2f} | {row['kib']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
