"""Dependency order for one pass's writes: an origin before the streams that
mirror or source it.

A mirror created before its origin exists waits for the server's retry
(about 10 s on nats-server 2.15.1) before it copies anything; created after,
it catches up at once. `waves` groups decisions so that each wave depends
only on earlier ones; `execute_in_waves` runs each wave concurrently and
returns the results in the decisions' own order. Decisions that write
nothing, and writes that wait for nothing, all go in the first wave, so an
ordinary pass is still one `asyncio.gather`. A cycle (which `config` refuses
and the broker too) cannot stall a pass: what is left goes in a last wave.
`cli` and `worker` call this around `apply.execute`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from kanade_watchdog.config.sources import origins
from kanade_watchdog.core.plan import Decision

T = TypeVar("T")


def waves(decisions: Sequence[Decision]) -> list[list[Decision]]:
    """`decisions` in waves: each writing decision comes after the writes of
    the local streams it mirrors or sources."""
    writing = {d.resource.stream: d for d in decisions if d.writes}
    waits = {
        id(d): {o for o in origins(d.resource.declared) if o in writing and o != d.resource.stream}
        for d in decisions
        if d.writes
    }
    out: list[list[Decision]] = []
    done: set[str] = set()
    pending = list(decisions)
    while pending:
        ready = [d for d in pending if waits.get(id(d), set()) <= done]
        if not ready:  # a cycle: nothing would ever be ready
            ready = pending
        out.append(ready)
        done |= {d.resource.stream for d in ready}
        taken = {id(d) for d in ready}
        pending = [d for d in pending if id(d) not in taken]
    return out


async def execute_in_waves(
    decisions: Sequence[Decision], run: Callable[[Decision], Awaitable[T]]
) -> list[T]:
    """`run` for every decision, wave after wave; results in `decisions` order."""
    results: dict[int, T] = {}
    for wave in waves(decisions):
        for decision, result in zip(
            wave, await asyncio.gather(*(run(d) for d in wave)), strict=True
        ):
            results[id(decision)] = result
    return [results[id(d)] for d in decisions]
