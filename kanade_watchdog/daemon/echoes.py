"""The CREATED advisories of the daemon's own creates, told from everyone else's.

Every create the daemon sends comes back as a CREATED advisory, and an
advisory marks its stream for a read: in a delete storm that is a read per
heal on top of the read before the create and the second look after it, and
the broker's API (not the daemon) is what a storm saturates. A create is
therefore announced here just before it is sent, and the first CREATED
advisory of that stream within `WITHIN` seconds is taken as its echo and
marks nothing. Nothing is lost by it: a create that failed or lost a race
is retried by its own outcome, a delete that follows ours brings a DELETED
advisory, and the second look 150 ms after each write (`worker`) still
reads the stream if that advisory is dropped. The consumer keeper has one
too, for CONSUMER.CREATED (a stream read and a consumer list per consumer
heal otherwise). Pure, on an injected clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

WITHIN = 5.0  # seconds: an echo comes within milliseconds; a stale expectation lapses


class Echoes:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._expected: dict[str, float] = {}  # stream -> when its create was sent

    def expect(self, stream: str) -> None:
        """A create of `stream` is about to be sent."""
        now = self.clock()
        if len(self._expected) > 1024:  # creates whose echo never came (failed, dropped)
            self._expected = {s: t for s, t in self._expected.items() if now - t <= WITHIN}
        self._expected[stream] = now

    def own(self, stream: str) -> bool:
        """A CREATED advisory of `stream` arrived: True once for an echo of
        the daemon's own create sent within WITHIN seconds."""
        sent = self._expected.pop(stream, None)
        return sent is not None and self.clock() - sent <= WITHIN
