"""The daemon's consumer healing, run by the worker after each pass's streams.

A full pass reads the consumers of every stream a declared consumer uses
(one CONSUMER.LIST per 256 consumers per stream); a partial pass those of
the streams it was marked for (a stream or consumer advisory). The streams
a pass just created are in its `seen`, so a stream re-created after a
delete gets its consumers back in the same pass. Each read keeps every
declared consumer's ack floor (`core.position`); a consumer found missing
while its stream kept its messages is created again at floor + 1 and the
resume is logged at INFO with the sequence. Broker errors end the consumer
part of a pass with a warning; the next resync or advisory retries.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kanade_watchdog.broker import consumers as edge
from kanade_watchdog.broker.api import Broker
from kanade_watchdog.core.consumer_plan import ConsumerOutcome, plan_all
from kanade_watchdog.core.plan import Observed
from kanade_watchdog.core.position import Position, resume_from
from kanade_watchdog.core.position import observe as position_of
from kanade_watchdog.core.result import Result
from kanade_watchdog.model.consumers import CONSUMER_KIND
from kanade_watchdog.model.errors import BrokerError
from kanade_watchdog.model.events import Event
from kanade_watchdog.model.settings import Config
from kanade_watchdog.report.logs import fields

log = logging.getLogger("kanade_watchdog.consumers")


class ConsumerKeeper:
    def __init__(self) -> None:
        self.positions: dict[str, Position] = {}  # STREAM/DURABLE -> last ack floor seen
        self._present: dict[str, bool] = {}  # STREAM/DURABLE -> on the broker when last seen

    def missing(self, config: Config) -> frozenset[str]:
        """Declared consumers not known to be on the broker (READY waits for them)."""
        return frozenset(c.name for c in config.consumers if not self._present.get(c.name))

    async def after_pass(
        self,
        broker: Any,
        *,
        config: Config,
        full: bool,
        marked: Mapping[str, Any],
        listed: Mapping[str, Observed] | None,
        seen: Mapping[str, Observed | None],
    ) -> list[ConsumerOutcome]:
        """Heal the declared consumers this pass covers; never raises a broker error."""
        if not config.consumers or not isinstance(broker, Broker):
            return []
        wanted = [c for c in config.consumers if full or c.stream in marked]
        if not wanted:
            return []
        view: dict[str, Observed] = {k: v for k, v in (listed or {}).items() if not v.leaderless}
        for stream, obs in seen.items():
            if obs is None:
                view.pop(stream, None)
            else:
                view[stream] = obs
        try:
            for stream in sorted({c.stream for c in wanted} - set(view)):
                info = await broker.stream_info(stream)
                if info is not None:
                    view[stream] = info
            observed = await edge.observe(broker, wanted, view)
        except BrokerError as exc:
            log.warning("consumers not verified this pass: %s", exc)
            return []
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
            declared_streams=config.by_stream(),
            resume_at=resume_at,
        )
        try:
            outcomes = await edge.execute(broker, decisions)
        except BrokerError as exc:  # pragma: no cover - execute keeps errors per consumer
            log.warning("consumers not healed this pass: %s", exc)
            return []
        for o in outcomes:
            _report(o)
            if o.result is Result.CREATED:
                self._present[o.decision.consumer.name] = True
        return outcomes


_EVENT = {
    Result.CREATED: Event.CREATED,
    Result.UPDATED: Event.UPDATED,
    Result.BLOCKED: Event.BLOCKED,
    Result.NEWER_SPEC: Event.NEWER_SPEC,
    Result.FAILED: Event.FAILED,
}


def _report(o: ConsumerOutcome) -> None:
    """One line per action, with the journal fields streams carry (kind `consumer`)."""
    d = o.decision
    name = d.consumer.name
    event = _EVENT.get(o.result)
    if event is None:
        return  # in sync: nothing to say
    diff = "; ".join(str(c) for c in d.changes)
    extra = fields(
        resource=name,
        stream=d.consumer.stream,
        kind=CONSUMER_KIND,
        action=event,
        message_id=event,
        diff=diff,
        error=o.error,
        resumed_from=d.resume_from,
    )
    if o.result is Result.CREATED and d.resume_from is not None:
        log.info(
            "consumer %s: created, resumed at stream sequence %d", name, d.resume_from, extra=extra
        )
    elif o.result is Result.CREATED:
        log.info("consumer %s: created", name, extra=extra)
    elif o.result is Result.UPDATED:
        log.info("consumer %s: updated (%s)", name, diff, extra=extra)
    elif o.result is Result.FAILED:
        log.warning("consumer %s: failed: %s", name, o.error, extra=extra)
    else:
        log.warning("consumer %s: %s (%s)", name, o.result, d.reason, extra=extra)
