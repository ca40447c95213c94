"""The daemon's consumer healing, run by the worker after each pass's streams.

A full pass reads the consumers of every stream a declared consumer uses
(one CONSUMER.LIST per 256 consumers per stream); a partial pass those of
the streams it was marked for (a stream or consumer advisory). The streams
a pass just created are in its `seen`, so a stream re-created after a
delete gets its consumers back in the same pass. Each read keeps every
declared consumer's ack floor (`core.position`); a consumer found missing
while its stream kept its messages is created again at floor + 1. What
came of each consumer goes back to the worker as `reports.ConsumerDone`
data, into the pass's report: the reporters (`report.consumer_lines` for
the log and journal, `report.meter`) say it.

Each declared consumer has its own retry timing in the worker's `Backoff`,
keyed `STREAM/DURABLE` (no stream key holds a '/'): a failed write is tried
again when its backoff says (the worker marks the consumer's stream, trigger
`retry`), not at the next resync; until then full passes and other
consumers' retries leave it alone, and only an advisory for it or its stream
brings it in sooner. A failed read of the consumers ends the consumer part
of a pass with a warning and backs off each consumer it was to look at.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace

from kanade_watchdog.broker import consumers as edge
from kanade_watchdog.core.consumer_plan import plan_all
from kanade_watchdog.core.plan import Action, Observed
from kanade_watchdog.core.ports import Broker, ConsumerBroker
from kanade_watchdog.core.position import Position, resume_from
from kanade_watchdog.core.position import observe as position_of
from kanade_watchdog.core.reports import ConsumerDone
from kanade_watchdog.core.result import Result
from kanade_watchdog.daemon.backoff import Backoff
from kanade_watchdog.daemon.echoes import Echoes
from kanade_watchdog.daemon.queue import Batch
from kanade_watchdog.model.consumers import Consumer
from kanade_watchdog.model.errors import BrokerError
from kanade_watchdog.model.events import Trigger
from kanade_watchdog.model.settings import Config

log = logging.getLogger("kanade_watchdog.consumers")


class ConsumerKeeper:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.echoes = Echoes(clock)  # our own creates' CONSUMER.CREATED advisories
        self.positions: dict[str, Position] = {}  # STREAM/DURABLE -> last ack floor seen
        self._present: dict[str, bool] = {}  # STREAM/DURABLE -> on the broker when last seen
        self._lock = asyncio.Lock()
        # Consumers (STREAM/DURABLE) and streams an advisory named since their
        # last look: brought in even while their backoff runs. The two kinds of
        # name cannot collide, a stream name holds no '/'.
        self._woken: set[str] = set()

    def wake(self, name: str, config: Config) -> None:
        """An advisory named a declared consumer, or the stream of some: look at
        it in the next pass that covers its stream, backoff or not."""
        if any(name in (c.name, c.stream) for c in config.consumers):
            self._woken.add(name)

    def missing(self, config: Config) -> frozenset[str]:
        """Declared consumers not known to be on the broker (READY waits for them)."""
        return frozenset(c.name for c in config.consumers if not self._present.get(c.name))

    async def after_pass(
        self,
        broker: Broker,
        *,
        config: Config,
        declared: Collection[str],
        batch: Batch,
        backoff: Backoff,
        listed: Mapping[str, Observed] | None,
        seen: Mapping[str, Observed | None],
    ) -> list[ConsumerDone]:
        """Heal the declared consumers this pass covers; never raises a broker
        error. Each failure goes to `backoff` under the consumer's name, and
        its delay into its `ConsumerDone`."""
        if not config.consumers or not isinstance(broker, ConsumerBroker):
            return []
        # A partial pass in the fast lane ends beside the full one: one after
        # the other, the second reads what the first wrote instead of sending
        # the same create again (and counting a second heal).
        async with self._lock:
            wanted = self._covered(config, batch, backoff)
            if not wanted:
                return []
            out = await self._heal(
                broker, broker, wanted, declared=declared, batch=batch, listed=listed, seen=seen
            )
            if isinstance(out, BrokerError):  # not read: each is tried again on its backoff
                for c in wanted:
                    backoff.failed(c.name, transient=out.transient)
                return []
            return [self._booked(done, backoff) for done in out]

    def _covered(self, config: Config, batch: Batch, backoff: Backoff) -> list[Consumer]:
        """The consumers of the streams this pass covers, but not one whose
        backoff runs (unless an advisory named it or its stream)."""
        full = batch.full is not None
        wanted = [
            c
            for c in config.consumers
            if (full or c.stream in batch.streams)
            and (backoff.due(c.name) or not self._woken.isdisjoint((c.name, c.stream)))
        ]
        self._woken -= {c.name for c in wanted} | {c.stream for c in wanted}
        return wanted

    @staticmethod
    def _booked(done: ConsumerDone, backoff: Backoff) -> ConsumerDone:
        """Success (blocked and newer_spec included: decisions, not errors)
        resets the consumer's backoff; a failure sets its next try."""
        if done.result is not Result.FAILED:
            backoff.succeeded(done.name)
            return done
        return replace(done, delay=backoff.failed(done.name, transient=done.outcome.transient))

    async def _heal(
        self,
        streams: Broker,
        broker: ConsumerBroker,  # the same broker, as its consumer API
        wanted: list[Consumer],
        *,
        declared: Collection[str],
        batch: Batch,
        listed: Mapping[str, Observed] | None,
        seen: Mapping[str, Observed | None],
    ) -> list[ConsumerDone] | BrokerError:
        """The error when the consumers could not be read. Only the streams the
        wanted consumers use are looked at (a pass may have listed 10,000)."""
        used = {c.stream for c in wanted}
        view: dict[str, Observed] = {}
        for stream in used:
            obs = listed.get(stream) if listed is not None else None
            if stream in seen:
                obs = seen[stream]
            if obs is not None and not obs.leaderless:
                view[stream] = obs
        try:
            for stream in sorted(used - set(view)):
                info = await streams.stream_info(stream)
                if info is not None:
                    view[stream] = info
            observed = await edge.observe(broker, wanted, view)
        except BrokerError as exc:
            log.warning("consumers not verified this pass: %s", exc)
            return exc
        read_at = self.clock()
        for name, consumer_info in observed.infos.items():
            self.positions[name] = position_of(consumer_info)
        for c in wanted:
            self._present[c.name] = c.name in observed.infos
        resume_at: dict[str, int | None] = {}
        for c in wanted:
            if c.name not in observed.infos and c.stream in view:
                last = int((view[c.stream].state or {}).get("last_seq", 0) or 0)
                resume_at[c.name] = resume_from(self.positions.get(c.name), stream_last_seq=last)
        decisions = plan_all(
            wanted,
            streams={s: o.config for s, o in view.items()},
            observed=observed.configs(),
            declared_streams={s for s in used if s in declared},
            resume_at=resume_at,
        )
        out: list[ConsumerDone] = []
        for d in decisions:
            # One at a time, so each heal's latency ends at its own answer.
            if d.action is Action.CREATE:
                self.echoes.expect(d.consumer.name)
            [o] = await edge.execute(broker, [d])
            stream = d.consumer.stream
            out.append(
                ConsumerDone(
                    o,
                    trigger=batch.streams.get(stream) or batch.full or Trigger.RETRY,
                    marked_at=batch.arrived(stream),
                    answered_at=self.clock() if d.writes else read_at,
                )
            )
            if o.result is Result.CREATED:
                self._present[d.consumer.name] = True
        return out
