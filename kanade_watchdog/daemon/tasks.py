"""Named, guarded tasks: the supervisor's helpers (`main`).

A task that should live as long as the daemon and ends on its own (an
exception, or a return it had no reason to make) is a bug: `Tasks` logs it
the moment it happens, with its traceback (the journal's TRACEBACK field;
one line elsewhere), records which task it was and calls `on_failure`, so
the supervisor can stop and exit 70 instead of carrying on half alive.
`stop()` cancels them all and names those that would not end in time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("kanade_watchdog")


class Tasks:
    def __init__(self, on_failure: Callable[[], None]) -> None:
        self._on_failure = on_failure
        self._tasks: list[asyncio.Task[None]] = []
        self.failed: str | None = None  # the first task that died
        self.stopping = False

    def start(
        self, work: Coroutine[Any, Any, None], name: str, *, ends: bool = False
    ) -> asyncio.Task[None]:
        """`work` as a task named `name`; `ends` when returning is its job done."""
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(lambda t: self._ended(t, ends=ends))
        self._tasks.append(task)
        return task

    def _ended(self, task: asyncio.Task[None], *, ends: bool) -> None:
        if task.cancelled() or self.stopping:
            return
        exc = task.exception()
        if exc is None and ends:
            return
        name = task.get_name()
        if exc is not None:
            log.error(
                "task %s failed: %s: %s; exiting so systemd restarts the daemon",
                name,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
        else:
            log.error("task %s ended unexpectedly; exiting so systemd restarts the daemon", name)
        if self.failed is None:
            self.failed = name
        self._on_failure()

    async def stop(self, *, within: float) -> list[str]:
        """Cancel every task; the names of those still running after `within`
        seconds (they ignore their cancellation), sorted."""
        self.stopping = True
        live = [t for t in self._tasks if not t.done()]
        for task in live:
            task.cancel()
        if not live:
            return []
        _, stuck = await asyncio.wait(live, timeout=within)
        return sorted(t.get_name() for t in stuck)
