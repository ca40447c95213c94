"""Bounded waiting: work that may never end is given up on, never waited for.

Two places need it. nats-py's close after a failed TLS handshake waits
forever for a socket that is already gone (`connect`), and reading the
config file can block for good on a FIFO or a hung file system (`daemon.main`'s
reload). `bounded` gives an awaitable a time limit and, unlike
`asyncio.wait_for`, does not wait for a task that ignores its cancellation;
`in_thread` runs a blocking call in a daemon thread, which neither blocks
the loop nor keeps the process from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

log = logging.getLogger("kanade_watchdog.aio")

T = TypeVar("T")

CANCEL_GRACE = 0.5  # how long a timed-out task may take to acknowledge its cancellation

# Work given up on that has not finished yet: referenced so it is not
# garbage-collected mid-flight, and its outcome is collected when it ends.
_abandoned: set[asyncio.Future[Any]] = set()


def _collect(task: asyncio.Future[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.debug("abandoned work ended: %r", task.exception())


def in_background(aw: Awaitable[Any]) -> None:
    """Run `aw` to its end without anyone waiting for it."""
    task = asyncio.ensure_future(aw)
    _abandoned.add(task)
    task.add_done_callback(_collect)


def _abandon(task: asyncio.Future[Any]) -> None:
    task.cancel()
    if task.done():
        _collect(task)
    else:
        in_background(task)


async def bounded(aw: Awaitable[T], seconds: float, *, what: str) -> T:
    """`aw` within `seconds`, or TimeoutError naming `what`. A task that does
    not end once cancelled is left behind (referenced until it ends)."""
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        _abandon(task)
        raise
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait({task}, timeout=CANCEL_GRACE)
    _abandon(task)
    raise TimeoutError(f"{what} did not finish within {seconds:g}s")


def in_thread(fn: Callable[[], T], *, name: str) -> asyncio.Future[T]:
    """`fn()` in a daemon thread of its own. Unlike `asyncio.to_thread`, a call
    that never returns neither blocks the loop nor keeps the process from
    exiting (the default executor's threads are joined at exit, daemon
    threads are not). Cancelling the future abandons the call."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(settle: Callable[[], None]) -> None:
        def run() -> None:
            if not future.done():  # given up on meanwhile: the outcome is dropped
                settle()

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(run)

    def work() -> None:
        try:
            result = fn()
        except Exception as exc:  # handed to the awaiting task
            error = exc
            deliver(lambda: future.set_exception(error))
        else:
            deliver(lambda: future.set_result(result))

    threading.Thread(target=work, name=name, daemon=True).start()
    return future
