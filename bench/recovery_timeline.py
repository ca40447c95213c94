"""Where the time of a recovery goes: the broker down at start, then up
(table 4's case), with the requests of the daemon and of the floor timed.

The daemon's log cannot say it: its outcomes are logged when a pass ends,
all at once. So each healer runs here inside a wrapper process (`probe`)
that times, in the healer's own process, the connect, the readiness probe
(`$JS.API.INFO`), each JetStream request sent and answered, and for the
daemon each pass; only the `probe` mode imports the package, and only in
the daemon's process. Per round, in ms after the port first greeted:
connected, first STREAM.CREATE sent, last create answered, all 25 seen by
the observer. With --show, one round's whole timeline.

Run: python -m bench.recovery_timeline [--rounds 8] [--outage 1] [--show]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import rawclient as rc
from bench.procs import Proc, repo_config_at, repo_resources, start_broker, write_json
from bench.recovery import all_back
from tests.natsserver import NatsServer

TRACE = "BENCH_TIMELINE_TRACE"  # where the probed process writes its events


# --- inside the probed process --------------------------------------------------------


def _mark(out: Any, what: str) -> None:
    out.write(f"{time.time():.6f} {what}\n")


def _timed(out: Any, cls: Any, name: str, label: Callable[..., str | None]) -> None:
    """Wrap the coroutine method `cls.name`: an event when it starts and ends."""
    orig = getattr(cls, name)

    @functools.wraps(orig)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        what = label(*args, **kwargs)
        if what is None:
            return await orig(*args, **kwargs)
        _mark(out, f"{what} sent")
        try:
            result = await orig(*args, **kwargs)
        except BaseException as exc:
            _mark(out, f"{what} failed {type(exc).__name__}")
            raise
        _mark(out, f"{what} answered")
        return result

    setattr(cls, name, timed)


def _request_label(_nc: Any, subject: str, *_a: Any, **_k: Any) -> str:
    api = subject.split(".API.", 1)[-1]
    return f"request {api}"


def probe(argv: list[str]) -> None:
    """Run the daemon (`daemon ARGS`) or the floor (`floor ARGS`) with timing probes."""
    from nats.aio.client import Client  # only in the probed process

    out = open(os.environ[TRACE], "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    _timed(out, Client, "_process_connect_init", lambda *_a, **_k: "connect")
    _timed(out, Client, "request", _request_label)
    kind, rest = argv[0], argv[1:]
    if kind == "floor":
        sys.argv = ["rawclient", "floor", *rest]
        rc.main()
        return
    from kanade_watchdog.cli import main  # only in the probed process
    from kanade_watchdog.daemon.worker import Worker

    def pass_label(_worker: Any, batch: Any) -> str:
        return f"pass {batch.full or 'partial'} ({len(batch.streams)} marked)"

    _timed(out, Worker, "run_pass", pass_label)
    sys.exit(main(rest))


# --- the harness ------------------------------------------------------------------------


def _events(trace: Path, wall0: float) -> list[tuple[float, str]]:
    out = []
    for line in trace.read_text().splitlines():
        ts, what = line.split(" ", 1)
        out.append(((float(ts) - wall0) * 1000, what))
    return out


async def _round(kind: str, outage: float) -> tuple[list[float], list[tuple[float, str]]]:
    with tempfile.TemporaryDirectory() as tmp:
        srv = NatsServer(Path(tmp), name=kind)
        trace = Path(tmp) / "trace"
        os.environ[TRACE] = str(trace)
        wrapper = [sys.executable, "-m", "bench.recovery_timeline", "probe", kind]
        if kind == "floor":
            configs = write_json(Path(tmp) / "floor.json", rc.declared_configs(repo_resources()))
            proc = Proc([*wrapper, str(configs), srv.url], stream="stdout")
        else:
            conf = Path(tmp) / "daemon.toml"
            conf.write_text(repo_config_at(srv.url))
            args = ["run", "--config", str(conf), "--log-format", "json", "--log-level", "info"]
            proc = Proc([*wrapper, *args])
        try:
            await asyncio.sleep(outage)
            t0 = start_broker(srv)
            wall0 = time.time() - (time.perf_counter() - t0)
            back = await all_back(srv.url, t0) * 1000
            await proc.quiet(0.3)
        finally:
            proc.stop()
            srv.stop()
        events = [(t, w) for t, w in _events(trace, wall0) if t > -100]
    # The healer may answer the port a fraction of a millisecond before the
    # 1 ms poll that starts the clock does.
    after = [(t, w) for t, w in events if t > -2]
    connected = next(t for t, w in after if w == "connect answered")
    sent = [t for t, w in after if w.startswith("request STREAM.CREATE") and w.endswith("sent")]
    done = [t for t, w in after if w.startswith("request STREAM.CREATE") and "answered" in w]
    return [connected, min(sent), max(done), back], events


def main(argv: list[str] | None = None) -> None:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["probe"]:
        probe(args_in[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--outage", type=float, default=1.0, help="seconds the broker is down")
    parser.add_argument("--show", action="store_true", help="print one round's whole timeline")
    args = parser.parse_args(args_in)
    print(f"`python -m bench.recovery_timeline {' '.join(args_in)}` (load {os.getloadavg()})")
    print("\n| healer | connected | first create sent | last create answered | all 25 seen |")
    print("|---|---:|---:|---:|---:|")
    rows: dict[str, list[list[float]]] = {"daemon": [], "floor": []}
    shown: dict[str, list[tuple[float, str]]] = {}
    for _ in range(args.rounds):
        for kind, samples in rows.items():  # in turn: a drifting machine slows both alike
            row, shown[kind] = asyncio.run(_round(kind, args.outage))
            samples.append(row)
    for kind, samples in rows.items():
        medians = " | ".join(f"{statistics.median(c):.1f}" for c in zip(*samples, strict=True))
        print(f"| {kind} (median of {args.rounds}) | {medians} |")
    if args.show:
        for kind, events in shown.items():
            print(f"\n{kind}, last round (ms after the port greeted):\n")
            print("\n".join(f"    {t:7.1f}  {w}" for t, w in events if t < 400))


if __name__ == "__main__":
    main()
