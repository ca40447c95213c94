"""Idle cost of the HTTP endpoint: CPU and RSS of a process with it and without.

Four child processes idle side by side on an asyncio loop for the same
window, each having imported the daemon's heavy dependencies (nats-py,
APScheduler) so that only what the endpoint adds differs:

  bare      nothing more
  metrics   a `Metrics` with the declared resources' series (no listener)
  endpoint  `Metrics` and the `Endpoint` listening on loopback, never asked
  scraped   the same, scraped on /metrics every 15 s (Prometheus's default)

Each child reads its own /proc/self/stat (utime + stime) and
/proc/self/status (VmRSS) at the start and the end of the window and prints
them; this script prints a Markdown table.

Run: .venv/bin/python -m bench.http_idle [--idle 60] [--resources 25]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

VARIANTS = ("bare", "metrics", "endpoint", "scraped")
SCRAPE_EVERY = 15.0
REPO = Path(__file__).resolve().parent.parent


# --- one child -------------------------------------------------------------------------


def _self_cpu_seconds() -> float:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _child(variant: str, idle: float, resources: int) -> None:
    import apscheduler.schedulers.asyncio  # noqa: F401  # the daemon's own imports
    import nats  # noqa: F401

    endpoint: Any = None
    if variant != "bare":
        from kanade_watchdog.report.metrics import Metrics

        metrics = Metrics()
        kinds = ("stream", "kv", "object_store")
        declared = [(kinds[i % 3], f"R{i}") for i in range(resources)]
        metrics.declare(declared)
        for kind, name in declared:
            metrics.resource_state(kind, name, "in_sync")
        metrics.connected(True)
        if variant in ("endpoint", "scraped"):
            from kanade_watchdog.report.http import Endpoint

            endpoint = Endpoint(
                "127.0.0.1",
                0,
                metrics=metrics,
                healthy=lambda: True,
                ready=lambda: (True, ""),
                status=lambda: {"in_sync": True},
            )
            await endpoint.start()
    port = endpoint.port if endpoint is not None else 0
    await asyncio.sleep(1)  # let start-up allocations settle
    print(json.dumps({"ready": True, "port": port}), flush=True)
    cpu0, rss0, precise0 = _self_cpu_seconds(), _self_rss_kib(), time.process_time()
    await asyncio.sleep(idle)
    cpu1, rss1, precise1 = _self_cpu_seconds(), _self_rss_kib(), time.process_time()
    if endpoint is not None:
        await endpoint.stop()
    print(
        json.dumps(
            {
                "variant": variant,
                "cpu_stat": cpu1 - cpu0,
                "cpu_precise": precise1 - precise0,
                "rss_start_kib": rss0,
                "rss_end_kib": rss1,
            }
        ),
        flush=True,
    )


# --- the comparison --------------------------------------------------------------------


def _scrape(port: int, times: int, stop: threading.Event, count: list[int]) -> None:
    for _ in range(times):  # all inside the child's window, none as it stops
        if stop.wait(SCRAPE_EVERY):
            return
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            r.read()
        count[0] += 1


def measure(idle: float, resources: int) -> tuple[list[dict[str, Any]], int]:
    flags = ["--idle", str(idle), "--resources", str(resources)]
    procs = {
        v: subprocess.Popen(
            [sys.executable, "-m", "bench.http_idle", "--child", v, *flags],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for v in VARIANTS
    }
    stop, scrapes = threading.Event(), [0]
    scraper: threading.Thread | None = None
    results: list[dict[str, Any]] = []
    try:
        for variant, proc in procs.items():
            assert proc.stdout is not None
            ready = json.loads(proc.stdout.readline())
            if variant == "scraped":
                times = int((idle - 1) // SCRAPE_EVERY)
                scraper = threading.Thread(
                    target=_scrape, args=(ready["port"], times, stop, scrapes)
                )
                scraper.start()
        for proc in procs.values():
            assert proc.stdout is not None
            results.append(json.loads(proc.stdout.readline()))
            proc.wait(timeout=30)
    finally:
        stop.set()
        if scraper is not None:
            scraper.join()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results, scrapes[0]


def table(results: list[dict[str, Any]], idle: float, scrapes: int) -> list[str]:
    base = next(r for r in results if r["variant"] == "bare")
    rows = [
        "| process | CPU over the window (stat) | CPU (precise) | CPU % of a core "
        "| RSS end | RSS vs bare |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        name = r["variant"] + (f" ({scrapes} scrapes)" if r["variant"] == "scraped" else "")
        rows.append(
            f"| {name} | {r['cpu_stat'] * 1000:.0f} ms | {r['cpu_precise'] * 1000:.1f} ms "
            f"| {r['cpu_precise'] / idle * 100:.3f}% | {r['rss_end_kib'] / 1024:.1f} MiB "
            f"| {(r['rss_end_kib'] - base['rss_end_kib']) / 1024:+.1f} MiB |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--resources", type=int, default=25)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(_child(args.child, args.idle, args.resources))
        return
    results, scrapes = measure(args.idle, args.resources)
    print(
        f"<!-- {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores, "
        f"idle {args.idle:g} s, {args.resources} resources -->"
    )
    for row in table(results, args.idle, scrapes):
        print(row)


if __name__ == "__main__":
    main()
