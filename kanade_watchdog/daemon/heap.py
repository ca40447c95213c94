"""The cyclic garbage collector kept off the heal path at scale.

At 10,000 declared streams the worker keeps ~200,000 objects (the broker as
last listed, the declared resources, the kept decisions), and each full pass
makes ~40,000 more. CPython then runs a full collection about once a pass,
at whatever moment the allocations tip it, which is usually inside the next
page of the stream list: measured 50-200 ms of a held event loop, so a heal
that lands then waits that long. After each full pass what the worker keeps
is long-lived, and `gc.freeze()` takes it out of every later collection
(reference counting still frees it when the next list replaces it): the
full collections that remain see only what changed since, ~5-15 ms.

Frozen objects are never looked at for cycles, so a cycle that was garbage
at a freeze would stay. Once every `REFRESH_EVERY` the heap is unfrozen
instead, and the collector's next full collection reclaims such cycles: one
long pause an hour instead of one a pass.

While a full pass reads the stream list, the previous one is still held;
once it is let go, its larger blocks (a stream's config dict is ~1.5 KiB,
past Python's small-object allocator) sit free in the C allocator. After
each full pass `malloc_trim` hands them back to the system (glibc; a no-op
elsewhere): ~8 MiB of resident memory at 10,000 streams.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import time
from collections.abc import Callable

REFRESH_EVERY = 3600.0  # seconds between unfreezes


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim among the interpreter's own symbols (no library
    search, no helper process), looked up once; None elsewhere."""
    found: Callable[[int], int] | None = getattr(ctypes.CDLL(None), "malloc_trim", None)
    return found


def trim() -> None:
    """Free pages of the C allocator back to the system, where glibc can."""
    malloc_trim = _malloc_trim()
    if malloc_trim is not None:
        malloc_trim(0)


class Heap:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        freeze: Callable[[], None] = gc.freeze,
        unfreeze: Callable[[], None] = gc.unfreeze,
        release: Callable[[], None] = trim,
    ) -> None:
        self.clock = clock
        self._freeze = freeze
        self._unfreeze = unfreeze
        self._release = release
        self._refreshed = clock()

    def settled(self) -> None:
        """A full pass was booked: what the worker keeps now is long-lived."""
        self._release()
        now = self.clock()
        if now - self._refreshed >= REFRESH_EVERY:
            self._refreshed = now
            self._unfreeze()
        else:
            self._freeze()
