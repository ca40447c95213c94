"""`daemon.heap.Heap`: after each full pass the worker's long-lived objects
are frozen out of the cyclic collector, and once an hour unfrozen so that
cycles caught in a freeze are reclaimed. Injected clock and calls; one case
with the real collector."""

from __future__ import annotations

import asyncio
import gc

from kanade_watchdog.daemon.heap import REFRESH_EVERY, Heap
from kanade_watchdog.daemon.worker import Worker
from kanade_watchdog.model.events import Trigger
from tests.capture import Capture
from tests.test_pass_pacing import converged, many
from tests.test_reporters import until
from tests.test_worker import FakeClock


def test_each_full_pass_freezes_and_the_hour_unfreezes() -> None:
    """Free memory back to the system and freeze after every settled pass;
    the first one past REFRESH_EVERY unfreezes instead, and the hour starts
    again from there."""
    clock = FakeClock()
    calls: list[str] = []
    heap = Heap(
        clock,
        freeze=lambda: calls.append("freeze"),
        unfreeze=lambda: calls.append("un"),
        release=lambda: calls.append("trim"),
    )
    for _ in range(3):
        heap.settled()
        clock.advance(30)
    clock.advance(REFRESH_EVERY)
    heap.settled()
    heap.settled()
    clock.advance(REFRESH_EVERY - 1)
    heap.settled()
    assert calls == ["trim", "freeze"] * 3 + ["trim", "un"] + ["trim", "freeze"] * 2


async def test_the_worker_freezes_after_a_full_pass_not_after_a_partial_one() -> None:
    """Through the worker's loop, with the real collector: a full pass that
    read everything leaves the heap frozen; the frozen objects are what
    reference counting still frees (this checks only the collector's count)."""
    config = many(20)
    worker = Worker(config, reporter=Capture())
    worker.attach(converged(config))
    gc.unfreeze()
    try:
        worker.mark("S00001", Trigger.ADVISORY)
        run = asyncio.create_task(worker.run())
        await until(lambda: worker.passes == 1)
        assert gc.get_freeze_count() == 0
        worker.mark_all(Trigger.RESYNC)
        await until(lambda: worker.passes == 2 and gc.get_freeze_count() > 0)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    finally:
        gc.unfreeze()
