"""`aio.bounded` and `aio.in_thread`: work that may never end is given up on.

In-process with small real timeouts (these helpers ARE about real time), plus
one subprocess that proves a thread stuck reading a FIFO does not keep the
process from exiting, where `asyncio.to_thread` would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kanade_watchdog.broker import aio
from tests.conftest import REPO


async def _stubborn(release: asyncio.Event) -> str:
    """Ignores cancellation until `release` is set, like nats-py's close of a
    TLS socket that never reports being closed."""
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            continue
    return "released"


async def test_bounded_returns_the_result_in_time() -> None:
    """An awaitable that ends in time gives its result, nothing is left behind."""

    async def quick() -> int:
        await asyncio.sleep(0.01)
        return 42

    assert await aio.bounded(quick(), 1.0, what="quick") == 42
    assert not aio._abandoned


async def test_bounded_abandons_a_task_that_ignores_cancellation() -> None:
    """A task that ignores its cancellation costs at most `seconds` plus the
    cancel grace: TimeoutError names the work, the task is kept referenced
    until it ends, then forgotten."""
    release = asyncio.Event()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"closing did not finish within 0\.1s"):
        await aio.bounded(_stubborn(release), 0.1, what="closing")
    assert time.monotonic() - started < 0.1 + aio.CANCEL_GRACE + 0.3
    assert len(aio._abandoned) == 1
    release.set()
    for _ in range(100):
        if not aio._abandoned:
            break
        await asyncio.sleep(0.01)
    assert not aio._abandoned


async def test_cancelling_the_caller_cancels_the_bounded_work() -> None:
    """A caller cancelled while it waits (shutdown) cancels the work too."""
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    caller = asyncio.create_task(aio.bounded(slow(), 5.0, what="slow"))
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(cancelled.wait(), 1.0)


async def test_in_thread_hands_back_results_and_exceptions_off_the_loop() -> None:
    """The call runs in another thread; its result or exception reaches the
    awaiting task; the loop keeps running meanwhile."""
    loop_thread = threading.get_ident()
    assert await aio.in_thread(threading.get_ident, name="t") != loop_thread

    def boom() -> None:
        raise ValueError("bad file")

    with pytest.raises(ValueError, match="bad file"):
        await aio.in_thread(boom, name="t")

    gate = threading.Event()
    slow = aio.in_thread(lambda: gate.wait(5), name="t")
    ticks = 0
    while ticks < 5:  # the loop is free while the thread blocks
        await asyncio.sleep(0.01)
        ticks += 1
    assert not slow.done()
    gate.set()
    assert await slow is True


async def test_a_given_up_call_finishing_later_is_ignored() -> None:
    """A thread that finishes after the caller gave up settles nothing."""
    gate = threading.Event()
    with pytest.raises(TimeoutError):
        await aio.bounded(aio.in_thread(lambda: gate.wait(5), name="t"), 0.05, what="read")
    gate.set()
    await asyncio.sleep(0.05)  # the late delivery runs on the loop: no error


EXIT_PROBE = """
import asyncio, sys
from kanade_watchdog.broker import aio
async def main():
    path = sys.argv[1]
    read = aio.in_thread(lambda: open(path).read(), name="fifo-reader")
    try:
        await aio.bounded(read, 0.2, what="reading")
    except TimeoutError as exc:
        print(exc)
asyncio.run(main())
"""


def test_a_thread_stuck_on_a_fifo_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    """A read of a FIFO nobody writes never returns; the process still exits
    at once when its loop is done (`asyncio.to_thread` would hang in
    asyncio.run's executor shutdown)."""
    fifo = tmp_path / "watchdog.toml"
    os.mkfifo(fifo)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_PROBE, str(fifo)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "reading did not finish within 0.2s"
    assert time.monotonic() - started < 10
