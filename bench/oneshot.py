"""One-shot commands at scale and their process cost (issue 13, tables 2 and 6).

Table 2: `kanade-watchdog apply --json` creating N tiny memory streams on an
empty broker (exit code, failures it reports, streams really on the broker,
wall time), `plan --json` right after (exit code, resources not in sync),
and the floor: `python -m bench.rawclient create` making the same N streams
on another empty broker with 64 requests in flight.

Table 6: whole-process wall time of `plan` (the 25 kanade resources, in
sync), median of R runs, against a bare script that imports nats-py,
connects, lists the streams and exits, and `python -c pass`; then the
heaviest top-level imports of the CLI from `python -X importtime`.

Run: python -m bench.oneshot [--quick] [--streams 5000] [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

from bench import rawclient as rc
from bench.oneshot_startup import installed_env
from bench.procs import REPO, daemon_toml, env, header, kanade, p50_p99_max, repo_config_at
from tests.natsserver import NatsServer

BARE_LIST = """\
import asyncio, json, sys
import nats
async def main():
    nc = await nats.connect(sys.argv[1])
    msg = await nc.request("$JS.API.STREAM.LIST", b'{"offset":0}', timeout=2)
    json.loads(msg.data)
    await nc.close()
asyncio.run(main())
"""


def _run(
    argv: list[str], *, timeout: float = 900, environ: dict[str, str] | None = None
) -> tuple[int, float, str, str]:
    started = time.perf_counter()
    done = subprocess.run(
        argv,
        cwd=REPO,
        env=environ or env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, time.perf_counter() - started, done.stdout, done.stderr


def _count(url: str) -> int:
    async def go() -> int:
        nc = await nats.connect(url)
        names = await rc.stream_names(nc, wait=10)
        await nc.close()
        return len(names)

    return asyncio.run(go())


def _doc(stdout: str) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(stdout)
    except ValueError:
        return {}
    return doc


def apply_table(n: int, command: str) -> list[str]:
    rows = header(f"One-shot apply creating {n} streams on an empty broker", command)
    rows += [
        "| command | exit | failures reported | streams on the broker after | wall s "
        "| work s (--json seconds) | first failure |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        srv = NatsServer(tmp, name="apply").start()
        try:
            conf = tmp / "apply.toml"
            conf.write_text(daemon_toml(srv.url, rc.tiny_toml(n)))
            code, wall, out, _err = _run(kanade("apply", "--config", str(conf), "--json"))
            doc = _doc(out)
            failed = [r for r in doc.get("resources", []) if r.get("result") == "failed"]
            first = str(failed[0].get("error", ""))[:80] if failed else ""
            rows.append(
                f"| `kanade-watchdog apply` | {code} | {len(failed)} | {_count(srv.url)} | "
                f"{wall:.2f} | {doc.get('seconds', 'n/a')} | {first} |"
            )
            code, wall, out, _err = _run(kanade("plan", "--config", str(conf), "--json"))
            doc = _doc(out)
            pending = [r for r in doc.get("resources", []) if r.get("action") != "in_sync"]
            rows.append(
                f"| `kanade-watchdog plan` right after | {code} | {len(pending)} not in sync | "
                f"{_count(srv.url)} | {wall:.2f} | {doc.get('seconds', 'n/a')} | |"
            )
        finally:
            srv.stop()
        srv = NatsServer(tmp, name="floor").start()
        try:
            configs = tmp / "floor.json"
            configs.write_text(json.dumps([rc.tiny_config(i) for i in range(n)]))
            argv = [sys.executable, "-m", "bench.rawclient", "create", str(configs), srv.url]
            code, wall, out, _err = _run(argv)
            doc = _doc(out)
            sample = doc.get("sample") or [""]
            rows.append(
                f"| floor: nats-py, 64 in flight | {code} | {doc.get('failed', 'n/a')} | "
                f"{_count(srv.url)} | {wall:.2f} | {doc.get('seconds', 0):.2f} | "
                f"{str(sample[0])[:80]} |"
            )
        finally:
            srv.stop()
    return rows


def _importtime(conf: Path) -> tuple[list[tuple[str, float]], list[tuple[str, float]], float]:
    """Self import time summed per top-level package (ms), heaviest first, and
    the total: where the CLI's start-up goes, wherever a package is imported."""
    argv = [sys.executable, "-X", "importtime", "-m", "kanade_watchdog", "plan"]
    _code, _wall, _out, err = _run([*argv, "--config", str(conf)])
    by_package: dict[str, float] = {}
    by_module: dict[str, float] = {}
    for line in err.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, _cumulative, name = line.removeprefix("import time:").split("|")
        package = name.strip().split(".")[0]
        by_package[package] = by_package.get(package, 0.0) + int(own) / 1000
        by_module[name.strip()] = int(own) / 1000
    ranked = sorted(by_package.items(), key=lambda x: -x[1])
    modules = sorted(by_module.items(), key=lambda x: -x[1])
    return ranked, modules, sum(by_package.values())


def plan_process_table(runs: int, command: str) -> list[str]:
    rows = header(f"One-shot plan, whole process (median of {runs})", command)
    rows += ["| process | median ms | p99 ms | max ms | exit |", "|---|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        srv = NatsServer(tmp, name="plan").start()
        try:
            conf = tmp / "plan.toml"
            conf.write_text(repo_config_at(srv.url))
            code, *_ = _run(kanade("apply", "--config", str(conf)))
            assert code == 0, code
            cases = {
                "`kanade-watchdog plan` (25 in sync)": kanade("plan", "--config", str(conf)),
                "bare script: import nats-py, connect, list": [
                    sys.executable,
                    "-c",
                    BARE_LIST,
                    srv.url,
                ],
                "`python -c pass` (interpreter only)": [sys.executable, "-c", "pass"],
            }
            samples: dict[str, list[float]] = {name: [] for name in cases}
            codes: dict[str, set[int]] = {name: set() for name in cases}
            # As installed: modules read compiled, not compiled on every start
            # (PYTHONDONTWRITEBYTECODE would otherwise make every run compile
            # the checkout's package, and only it); one untimed run compiles.
            installed = installed_env(tmp / "pycache")
            for argv in cases.values():
                _run(argv, environ=installed)
            for _ in range(runs):  # interleaved, so load changes hit every case alike
                for name, argv in cases.items():
                    code, wall, _out, _err = _run(argv, environ=installed)
                    samples[name].append(wall * 1000)
                    codes[name].add(code)
            for name in cases:
                cells = p50_p99_max(samples[name], "{:.0f}")
                rows.append(f"| {name} | {cells} | {sorted(codes[name])} |")
            plan_ms = statistics.median(samples[next(iter(cases))])
            bare_ms = statistics.median(samples["bare script: import nats-py, connect, list"])
            rows += ["", f"Ratio plan / bare script: {plan_ms / bare_ms:.2f} (target <= 1.2)"]
            top, modules, total = _importtime(conf)
        finally:
            srv.stop()
    rows += [
        "",
        f"`python -X importtime -m kanade_watchdog plan`: {total:.0f} ms of imports in all; "
        "the heaviest packages (own import time of every module in the package):",
        "",
        "| package | ms |",
        "|---|---:|",
    ]
    rows += [f"| {name} | {ms:.1f} |" for name, ms in top[:10]]
    rows += ["", "The heaviest single modules (own time):", "", "| module | ms |", "|---|---:|"]
    rows += [f"| {name} | {ms:.1f} |" for name, ms in modules[:10]]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 streams, 5 runs")
    parser.add_argument("--streams", type=int, default=None, help="default 5000; 0 skips")
    parser.add_argument("--runs", type=int, default=None, help="default 20; 0 skips")
    args = parser.parse_args(argv)
    streams = args.streams if args.streams is not None else (500 if args.quick else 5000)
    runs = args.runs if args.runs is not None else (5 if args.quick else 20)
    command = " ".join(["python -m bench.oneshot", *(sys.argv[1:] if argv is None else argv)])
    if streams:
        for row in apply_table(streams, command):
            print(row, flush=True)
    if runs:
        for row in plan_process_table(runs, command):
            print(row, flush=True)


if __name__ == "__main__":
    main()
