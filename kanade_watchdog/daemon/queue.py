"""The work queue every trigger feeds, and the batch a pass takes from it.

Triggers (startup, the resync timer, reconnects, advisories, reloads,
retries, re-checks) only MARK work: "everything" or "these streams". The
worker takes everything marked so far as one `Batch`, so a burst of events
becomes one pass. Each mark keeps when it arrived (the first mark of a
stream or of "everything" counts): a heal's latency is measured from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kanade_watchdog.model.events import Trigger


@dataclass
class Batch:
    full: Trigger | None = None
    full_at: float = 0.0  # monotonic: when "everything" was first marked
    streams: dict[str, Trigger] = field(default_factory=dict)
    marked_at: dict[str, float] = field(default_factory=dict)  # stream -> its first mark

    def __bool__(self) -> bool:
        return self.full is not None or bool(self.streams)

    def arrived(self, stream: str) -> float:
        """When the trigger that brings `stream` into this pass arrived."""
        return self.marked_at.get(stream, self.full_at)


class WorkQueue:
    """Marks from any trigger; `take()` hands the worker everything marked so far."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._pending = Batch()
        self._wake = asyncio.Event()
        self._stream_marked = asyncio.Event()  # the fast lane's wake-up
        self.marks = 0  # how many marks were made (coalescing is marks vs passes)

    def mark_all(self, trigger: Trigger) -> None:
        self.marks += 1
        if self._pending.full is None:
            self._pending.full = trigger
            self._pending.full_at = self.clock()
        self._wake.set()

    def mark(self, stream: str, trigger: Trigger) -> None:
        # Even a DELETED advisory leads to a read before the create: anyone may
        # publish on the advisory subjects, and an in-sync stream is never written.
        self.marks += 1
        if stream not in self._pending.streams:
            self._pending.streams[stream] = trigger
            self._pending.marked_at[stream] = self.clock()
        elif self._pending.streams[stream] is Trigger.VERIFY:
            # A second look only asks whether the stream still exists; any
            # other trigger wants it read and compared.
            self._pending.streams[stream] = trigger
        self._wake.set()
        self._stream_marked.set()

    async def wait(self, at_most: float | None) -> None:
        # Not wait_for: on 3.11 a cancellation that races a mark is swallowed
        # (the woken wait is returned instead), and the worker never stops.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most):
                await self._wake.wait()

    async def wait_streams(self) -> None:
        """Until a single stream is marked (a full mark alone does not wake it)."""
        await self._stream_marked.wait()

    def take_streams(self) -> Batch:
        """The single-stream marks so far; a full mark stays pending."""
        batch = Batch(streams=self._pending.streams, marked_at=self._pending.marked_at)
        self._pending.streams, self._pending.marked_at = {}, {}
        self._stream_marked.clear()
        if self._pending.full is None:
            self._wake.clear()
        return batch

    def take(self) -> Batch:
        batch, self._pending = self._pending, Batch()
        self._wake.clear()
        self._stream_marked.clear()
        return batch
