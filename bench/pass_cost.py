"""The daemon's cost of one reconcile pass at N declared streams, on the event loop.

A real `Daemon` (its worker and every reporter: log, status board, systemd
with a sender that drops the datagrams) against `tests.fakebroker.FakeBroker`
holding every declared stream already in sync, so the figure is the
daemon's own work per pass (reading the list, planning, reporting, STATUS),
with no network. Two passes each: startup (the first) and resync.

    PYTHONPATH=. .venv/bin/python bench/pass_cost.py 1000 4000 8000
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from kanade_watchdog.config.load import parse
from kanade_watchdog.core import desired
from kanade_watchdog.daemon.main import Daemon
from kanade_watchdog.model.events import Trigger
from kanade_watchdog.model.settings import Config
from kanade_watchdog.report.systemd import Notifier
from tests.fakebroker import FakeBroker
from tests.test_lifecycle import links_to


def config(n: int) -> Config:
    document: dict[str, Any] = {
        "nats": {"servers": ["nats://127.0.0.1:1"]},
        "watchdog": {"pass_deadline": "1h"},
        "streams": {f"S{i:05d}": {"subjects": [f"s{i}.>"]} for i in range(n)},
    }
    return parse(document, "bench.toml")


async def passes(n: int) -> list[float]:
    cfg = config(n)
    broker = FakeBroker()
    for res in cfg.resources:  # in sync already: the fake's overlap check is O(n) per create
        broker.streams[res.stream] = broker._normalized(desired.create_config(res))
    daemon = Daemon(cfg, notifier=Notifier(send=lambda _text: True), connect=links_to(broker))
    daemon.worker.attach(broker)
    seconds = []
    for trigger in (Trigger.STARTUP, Trigger.RESYNC):
        daemon.worker.mark_all(trigger)
        started = time.perf_counter()
        await daemon.worker.run_pass(daemon.worker.queue.take())
        seconds.append(time.perf_counter() - started)
    return seconds


def main(argv: list[str]) -> None:
    print("| streams | startup pass | resync pass |")
    print("|---:|---:|---:|")
    for n in map(int, argv or ["1000", "4000", "8000"]):
        startup, resync = asyncio.run(passes(n))
        print(f"| {n} | {startup:.3f} s | {resync:.3f} s |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
