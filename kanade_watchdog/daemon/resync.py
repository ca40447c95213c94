"""The periodic full resync: an APScheduler 3.x interval job that only marks work.

Advisories are fire-and-forget (lost while disconnected, none for a memory
stream lost in a restart), so a timer re-verifies everything regardless.
coalesce + max_instances=1 mean a late timer never queues a backlog; the
job itself is a mark, so it can never overlap a pass either.
"""

from __future__ import annotations

from collections.abc import Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler


def _jitter(interval: float, jitter: float) -> float | None:
    # Jitter spreads several watchdogs' resyncs apart; more than half the
    # interval would make the interval meaningless.
    bounded = min(jitter, interval / 2)
    return bounded if bounded > 0 else None


class ResyncTimer:
    def __init__(self, mark: Callable[[], None], *, interval: float, jitter: float) -> None:
        self._scheduler = AsyncIOScheduler()
        self._scheduler.add_job(
            mark,
            "interval",
            seconds=interval,
            jitter=_jitter(interval, jitter),
            coalesce=True,
            max_instances=1,
            id="resync",
            misfire_grace_time=None,
        )

    def start(self) -> None:
        self._scheduler.start()

    def reschedule(self, *, interval: float, jitter: float) -> None:
        self._scheduler.reschedule_job(
            "resync", trigger="interval", seconds=interval, jitter=_jitter(interval, jitter)
        )

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
