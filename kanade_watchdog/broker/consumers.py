"""The JetStream consumer API edge: the paged list per stream, and writes
with the create/update action.

`observe` reads only the streams that some declared consumer uses, one
CONSUMER.LIST request per 256 consumers; `execute` sends each decision's
config to `$JS.API.CONSUMER.CREATE.<stream>.<durable>` with the body
`{"stream_name", "config", "action"}`: "create" never overwrites (10148),
"update" never creates (10149). Nothing here deletes. Built on
`ports.ConsumerBroker` (`api.Broker` over nats-py, the one edge for errors
and request counts; tests/fakebroker.py in memory); the one-shot commands
and the daemon call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kanade_watchdog.broker.api import PAGE_SIZE
from kanade_watchdog.core.consumer_plan import ConsumerDecision, ConsumerOutcome, plan_all
from kanade_watchdog.core.plan import Action
from kanade_watchdog.core.ports import ConsumerBroker
from kanade_watchdog.core.result import Result
from kanade_watchdog.model.consumers import Consumer
from kanade_watchdog.model.errors import BrokerError

__all__ = ["PAGE_SIZE", "ConsumerOutcome", "Observation", "execute", "observe"]


@dataclass
class Observation:
    """The consumers read in one pass: `STREAM/DURABLE` -> CONSUMER.INFO-shaped
    answer (config, delivered, ack_floor)."""

    infos: dict[str, Mapping[str, Any]] = field(default_factory=dict)

    def configs(self) -> dict[str, Mapping[str, Any]]:
        return {name: info.get("config") or {} for name, info in self.infos.items()}


async def observe(
    broker: ConsumerBroker, consumers: Iterable[Consumer], existing_streams: Iterable[str]
) -> Observation:
    """The consumers of the streams a declared consumer uses and that exist;
    every other stream's consumers are never read."""
    exists = set(existing_streams)
    wanted = sorted({c.stream for c in consumers} & exists)
    seen = Observation()
    for stream in wanted:
        for info in await broker.list_consumers(stream):
            name = str(info.get("name") or (info.get("config") or {}).get("durable_name", ""))
            seen.infos[f"{stream}/{name}"] = info
    return seen


async def write(broker: ConsumerBroker, decision: ConsumerDecision) -> Mapping[str, Any]:
    c = decision.consumer
    return await broker.put_consumer(
        c.stream, c.durable, decision.send or {}, action=decision.api_action
    )


_DONE = {
    Action.CREATE: Result.CREATED,
    Action.UPDATE: Result.UPDATED,
    Action.IN_SYNC: Result.IN_SYNC,
    Action.BLOCKED: Result.BLOCKED,
    Action.NEWER_SPEC: Result.NEWER_SPEC,
}


async def execute(
    broker: ConsumerBroker, decisions: Sequence[ConsumerDecision]
) -> list[ConsumerOutcome]:
    """Carry out each decision in turn; a failure is that consumer's outcome,
    never the others'."""
    out: list[ConsumerOutcome] = []
    for d in decisions:
        if not d.writes:
            out.append(ConsumerOutcome(d, _DONE[d.action]))
            continue
        try:
            await write(broker, d)
        except BrokerError as exc:
            code = getattr(exc, "err_code", 0)
            out.append(
                ConsumerOutcome(
                    d,
                    Result.FAILED,
                    error=str(exc),
                    transient=exc.transient,
                    code=str(code) if code else type(exc).__name__,
                )
            )
            continue
        out.append(ConsumerOutcome(d, _DONE[d.action]))
    return out


async def plan_consumers(
    broker: ConsumerBroker,
    consumers: Sequence[Consumer],
    *,
    existing_streams: Iterable[str],
    declared_streams: Iterable[str],
    resume_at: Mapping[str, int | None] | None = None,
) -> tuple[list[ConsumerDecision], Observation]:
    """Read the consumers the declared ones may be, and decide on each."""
    if not consumers:
        return [], Observation()
    exists = set(existing_streams)
    seen = await observe(broker, consumers, exists)
    decisions = plan_all(
        consumers,
        streams={s: {} for s in exists},
        observed=seen.configs(),
        declared_streams=declared_streams,
        resume_at=resume_at,
    )
    return decisions, seen
