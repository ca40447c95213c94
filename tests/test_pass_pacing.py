"""How the daemon's passes pace themselves, in-process against
`tests.fakebroker`: writes bounded in flight, the loop never starved by a
large pass. Event order only; no speed asserted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from kanade_watchdog.broker.apply import MAX_IN_FLIGHT
from kanade_watchdog.config.load import parse
from kanade_watchdog.core.outcome import Result
from kanade_watchdog.core.plan import Observed
from kanade_watchdog.daemon.queue import Batch
from kanade_watchdog.daemon.worker import Worker
from kanade_watchdog.model.events import Trigger
from kanade_watchdog.model.settings import Config
from tests.capture import Capture
from tests.fakebroker import FakeBroker


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
