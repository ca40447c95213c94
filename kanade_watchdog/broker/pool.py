"""Writes with bounded concurrency, wave after wave.

`bounded` runs at most `limit` writes at once; `in_waves` does so wave after
wave (`core.order.waves`: an origin before what mirrors or sources it).
`apply.execute_all` (one-shot `apply`) and the daemon's reconciler both
write through them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from kanade_watchdog.core.order import waves
from kanade_watchdog.core.plan import Decision

T = TypeVar("T")
T_in = TypeVar("T_in")

# Writes in flight at once in `execute_all`. A broker carries out stream
# creates and updates largely one after another, so a request waits for all
# those sent before it: 5,000 creates sent at once waited past the 2 s
# timeout by the thousands (reported failed, then carried out all the same).
# Past a few in flight, more buy no speed (2,000 memory streams on 2 cores:
# ~1.9 s one at a time, 1.1-1.3 s with 64, 256 or all in flight). 64 keep the
# broker busy while each request waits behind at most 63 others: ~0.1 s at
# the ~1.5 ms a create takes beside 5,000 streams, within a 2 s timeout up to
# ~30 ms a create (a slow disk, a cluster's replicated create).
MAX_IN_FLIGHT = 64


async def in_waves(
    decisions: Sequence[Decision],
    run: Callable[[Decision], Awaitable[T]],
    *,
    limit: int = MAX_IN_FLIGHT,
) -> list[T]:
    """`run` for every decision, wave after wave (`order.waves`), at most
    `limit` of them in flight at once; results in `decisions` order. The
    daemon's passes write through this, like `execute_all`: a startup pass
    creating 10,000 streams keeps `limit` requests in the broker's hands,
    not 10,000."""
    results: dict[int, T] = {}
    for wave in waves(decisions):
        for decision, result in zip(wave, await bounded(wave, run, limit=limit), strict=True):
            results[id(decision)] = result
    return [results[id(d)] for d in decisions]


async def bounded(
    items: Sequence[T_in], run: Callable[[T_in], Awaitable[T]], *, limit: int
) -> list[T]:
    """`run` for every item, at most `limit` at once; results in `items` order."""
    outcomes: list[T | None] = [None] * len(items)
    queue = iter(range(len(items)))

    async def worker() -> None:
        # Workers share one iterator: a fixed number of tasks, however long the plan.
        for i in queue:
            outcomes[i] = await run(items[i])

    if len(items) == 1:  # the usual heal: no task to spawn, no extra loop hop
        outcomes[0] = await run(items[0])
    elif items:
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(limit, len(items))):
                    group.create_task(worker())
        except ExceptionGroup as failed:
            # A bug in one worker stops them all; its own error is the one to report.
            raise failed.exceptions[0] from None
    done = [o for o in outcomes if o is not None]
    if len(done) != len(items):
        # A request cancelled under a worker (nats-py cancels what is in flight
        # when the connection goes) ends that worker quietly in a TaskGroup;
        # the caller must see the pass cut short, as gather would have said.
        raise asyncio.CancelledError
    return done
