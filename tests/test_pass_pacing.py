"""How the daemon's passes pace themselves, in-process against
`tests.fakebroker`: writes bounded in flight, the loop never starved by a
large pass. Event order only; no speed asserted.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pytest

from kanade_watchdog.broker import apply
from kanade_watchdog.broker.pool import MAX_IN_FLIGHT
from kanade_watchdog.config.load import parse
from kanade_watchdog.core import desired, plan
from kanade_watchdog.core.outcome import Outcome
from kanade_watchdog.core.plan import Decision, Observed
from kanade_watchdog.core.result import Result
from kanade_watchdog.core.serverinfo import ServerInfo
from kanade_watchdog.daemon import reconcile
from kanade_watchdog.daemon.queue import Batch
from kanade_watchdog.daemon.worker import Worker
from kanade_watchdog.model.events import Trigger
from kanade_watchdog.model.resources import Resource
from kanade_watchdog.model.settings import Config
from kanade_watchdog.report.status import StatusBoard
from kanade_watchdog.report.systemd import Health, Notifier, SystemdReporter
from tests.capture import Capture
from tests.fakebroker import FakeBroker, SlowBroker


def many(count: int, **extra: Any) -> Config:
    streams = {f"S{i:05d}": {"subjects": [f"s{i}.>"], **extra} for i in range(count)}
    document = {"nats": {"servers": ["nats://127.0.0.1:4222"]}, "streams": streams}
    return parse(document, "test.toml")


class Crowd(FakeBroker):
    """Counts the creates in its hands at once; each answer takes a few loop turns."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most = 0

    async def create(self, config: Mapping[str, Any]) -> Observed:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            for _ in range(3):
                await asyncio.sleep(0)
            return await super().create(config)
        finally:
            self.in_flight -= 1


async def test_a_startup_pass_keeps_a_bounded_number_of_creates_in_flight() -> None:
    count = MAX_IN_FLIGHT * 5 + 7
    broker = Crowd()
    capture = Capture()
    worker = Worker(many(count), reporter=capture)
    worker.attach(broker)
    report = await worker.run_pass(Batch(full=Trigger.STARTUP))
    assert len(broker.streams) == count
    assert sorted(d.result for d in report.done) == [Result.CREATED] * count
    assert 1 < broker.most <= MAX_IN_FLIGHT


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def converged(config: Config) -> FakeBroker:
    broker = FakeBroker()
    for res in config.resources:
        broker.streams[res.stream] = broker._normalized(desired.create_config(res))
    return broker


async def test_watchdog_pings_go_on_while_a_large_pass_decides() -> None:
    """Each decision costs 10 ms of (injected) CPU: 3,000 of them are 30 s
    without a ping unless the pass hands the loop back as it goes. The gap
    between pings stays under half a WatchdogSec=15s."""
    config = many(3000)
    clock = FakeClock()

    def costly(
        resource: Resource,
        observed: Observed | None,
        now: datetime,
        *,
        own_hashes: frozenset[str] = frozenset(),
        server: ServerInfo | None = None,
    ) -> Decision:
        clock.now += 0.01
        return plan.decide(resource, observed, now, own_hashes=own_hashes, server=server)

    pings: list[float] = []

    def sent(text: str) -> bool:
        if text.startswith("WATCHDOG=1"):
            pings.append(clock())
        return True

    worker = Worker(config, reporter=Capture(), clock=clock, decide=costly)
    worker.attach(converged(config))
    systemd = SystemdReporter(Notifier(send=sent), StatusBoard(config.resources))
    pinging = asyncio.create_task(
        systemd.keep_alive(0, lambda: Health(ok=True, stuck_for=0.0, limit=1.0))
    )
    try:
        await asyncio.sleep(0)
        report = await worker.run_pass(Batch(full=Trigger.RESYNC))
        await asyncio.sleep(0)
    finally:
        pinging.cancel()
    assert report.writes == 0
    assert not report.failed
    assert clock() - 1000.0 > 29.9  # every decision was made
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert pings[0] == 1000.0
    assert pings[-1] == clock()
    assert max(gaps) < 7.5


async def test_an_advisory_during_a_held_full_pass_is_healed_before_it_ends() -> None:
    """The full pass waits on its stream list; a stream deleted meanwhile is
    re-created by the fast lane (read, then create) while the list is still
    held, and the full pass then ends without writing it again."""
    config = many(50)
    inner = converged(config)
    slow = SlowBroker(inner, hold=frozenset({"list"}))
    worker = Worker(config, reporter=Capture())
    worker.attach(slow)
    worker.mark_all(Trigger.RESYNC)
    task = asyncio.create_task(worker.run())
    try:
        await slow.held.wait()
        inner.delete("S00007")
        worker.advisory("S00007")
        for _ in range(200):
            if "S00007" in inner.streams:
                break
            await asyncio.sleep(0)
        assert "S00007" in inner.streams
        assert not slow.release.is_set()
        assert worker.busy
        assert inner.requests["info"] == 1
        assert inner.requests["create"] == 1
        slow.release.set()
        await worker.wait_idle(within=5.0)
        assert inner.requests["create"] == 1
        assert inner.requests["update"] == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_resync_answers_in_sync_resources_without_holding_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nearly every decision of a resync sends nothing; their outcomes are
    recorded a few at a time between loop turns, as the decisions are made,
    so a heal arriving then waits for a few of them, not for thousands."""
    config = many(2000)
    turns = 0
    per_turn: Counter[int] = Counter()
    answer = apply.without_write

    def counted(decision: Decision) -> Outcome:
        per_turn[turns] += 1
        return answer(decision)

    async def ticking() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    monkeypatch.setattr(reconcile, "without_write", counted)
    worker = Worker(config, reporter=Capture())
    worker.attach(converged(config))
    ticker = asyncio.create_task(ticking())
    try:
        await asyncio.sleep(0)
        report = await worker.run_pass(Batch(full=Trigger.RESYNC))
    finally:
        ticker.cancel()
    assert report.in_sync == 2000
    assert sum(per_turn.values()) == 2000
    assert max(per_turn.values()) <= reconcile.YIELD_EVERY
