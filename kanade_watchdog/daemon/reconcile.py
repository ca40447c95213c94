"""One reconcile pass: read -> decide -> execute, and what came of it as data.

A full pass reads the broker with the paged stream list and looks at every
declared resource the worker is not holding back (`waiting`); a partial
pass reads just the streams marked in its batch. Writes happen only for
decisions that need them, and an update only where the write guard allows
(`may_update`; the others come back as `Held`). A failing resource never
stops the others. The result is a `reports.PassReport` with what was seen
of each stream on the way, for the worker's view of the broker. No
logging and no bookkeeping here: `worker` keeps the backoff, the guard and
the causes, and hands the report to the reporters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from kanade_watchdog.broker.apply import execute, without_write
from kanade_watchdog.broker.pool import MAX_IN_FLIGHT, in_waves
from kanade_watchdog.core.cluster import cluster_facts
from kanade_watchdog.core.outcome import Outcome
from kanade_watchdog.core.plan import Action, Decision, Observed
from kanade_watchdog.core.ports import Broker, StreamNames
from kanade_watchdog.core.reports import (
    Done,
    Failed,
    Held,
    PassReport,
    ReadFailure,
    present_after,
)
from kanade_watchdog.core.result import Result
from kanade_watchdog.daemon.queue import Batch
from kanade_watchdog.model.errors import BrokerError, BrokerUnavailable
from kanade_watchdog.model.events import Trigger
from kanade_watchdog.model.resources import Resource

# A full pass hands the loop back this often while it decides (~1 ms of
# decisions): an advisory needs a few loop turns to become a heal (socket read,
# subscription, mark, the fast lane's read and write), and each turn waits for
# the next yield, so a coarser step (200: a 64 ms heal during a 1,000-stream
# pass) shows in the heal latency; watchdog pings go on all the same.
YIELD_EVERY = 25
# From this many second looks in one pass, one STREAM.NAMES request (1,024
# names a page) answers them instead of a STREAM.INFO each.
NAMES_FROM = 8
NO_LEADER = BrokerUnavailable("no leader answers for this stream right now")
WRITES = ("create", "update")


@dataclass
class Pass:
    """A pass's report, and what it saw of the broker on the way."""

    report: PassReport
    listed: dict[str, Observed] | None = None  # the full pass's stream list
    seen: dict[str, Observed | None] = field(default_factory=dict)  # reads and write answers
    skipped: list[str] = field(default_factory=list)  # written by another pass meanwhile


class Claims:
    """Which pass is writing which stream, while a partial pass runs beside a
    full one (the worker's fast lane): a stream is written by one pass at a
    time. A pass claims a stream just before its write and lets go once
    answered; a stream another pass holds is left to that pass (`skipped`)."""

    def __init__(self) -> None:
        self._held: set[str] = set()

    def take(self, stream: str) -> bool:
        if stream in self._held:
            return False
        self._held.add(stream)
        return True

    def give_back(self, stream: str) -> None:
        self._held.discard(stream)


@dataclass(frozen=True)
class Rules:
    """What the worker decides for a pass: how to plan a resource, whether a
    full pass leaves one alone (still backing off), whether it may be updated."""

    decide: Callable[[Resource, Observed | None], Decision]
    waiting: Callable[[Resource, Mapping[str, Observed]], bool]
    may_update: Callable[[str], bool]
    creating: Callable[[str], None] = lambda _stream: None  # a create is about to be sent
    # In sync as last reported (`daemon.memo`): looked at, not reported again.
    unchanged: Callable[[Resource, Observed | None], bool] = lambda _res, _obs: False


async def reconcile(
    broker: Broker,
    batch: Batch,
    resources: Sequence[Resource],
    rules: Rules,
    *,
    head: PassReport,
    now: datetime,
    clock: Callable[[], float],
    limit: int = MAX_IN_FLIGHT,
    claims: Claims | None = None,
    by_stream: Mapping[str, Resource] | None = None,
) -> Pass:
    """`head` is the report's start (number, generation, scope, trigger, start
    time); the pass fills in the rest. With `claims`, a write another pass is
    making is not made again here: the stream goes in `skipped`."""
    writes_before = sum(broker.requests[verb] for verb in WRITES)
    out = Pass(head)
    decisions: list[tuple[Decision, Trigger]] = []
    failed: list[Failed] = []
    unchanged = 0
    if batch.full is not None:
        try:
            observed = await broker.list_streams()
        except BrokerError as exc:
            out.report = replace(head, finished=clock(), read_error=ReadFailure(exc))
            return out
        out.listed = observed
        for i, res in enumerate(resources):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            trigger = batch.streams.get(res.stream)
            if trigger is None and rules.waiting(res, observed):
                continue  # still backing off; an event would bring it in early
            trigger = trigger or batch.full
            obs = observed.get(res.stream)
            if obs is not None and obs.leaderless:
                # An election, not a fault of this resource: retried quietly.
                failed.append(Failed(res, NO_LEADER, trigger, present=True))
                continue
            if rules.unchanged(res, obs):
                unchanged += 1
                continue
            decisions.append((rules.decide(res, obs), trigger))
    else:
        # The map is the worker's, built once per config: a heal at 10,000
        # declared resources must not rebuild it (~6 ms each).
        if by_stream is None:
            by_stream = {r.stream: r for r in resources}
        targets = [(by_stream[s], t) for s, t in batch.streams.items() if s in by_stream]
        targets = await _still_there(broker, targets)
        if len(targets) == 1:  # the usual heal: no task to spawn, no loop turn to wait for
            infos: Sequence[Observed | BrokerError | None] = [await _info(broker, targets[0][0])]
        else:
            infos = await asyncio.gather(*(_info(broker, r) for r, _ in targets))
        for (res, trigger), info in zip(targets, infos, strict=True):
            if isinstance(info, BrokerError):
                failed.append(Failed(res, info, trigger, present=None))
            else:
                out.seen[res.stream] = info
                if rules.unchanged(res, info):
                    unchanged += 1
                    continue
                decisions.append((rules.decide(res, info), trigger))
    held: list[Held] = []
    writing: list[tuple[Decision, Trigger]] = []
    for decision, trigger in decisions:
        if decision.action is Action.UPDATE and not rules.may_update(decision.resource.stream):
            held.append(Held(decision, trigger))
        else:
            writing.append((decision, trigger))

    # An origin is written before the streams that mirror or source it, and
    # at most `limit` writes are in the broker's hands at once.
    # Creates go after the pass's updates: an update narrowing a stream's
    # subjects (a revert) must land before the create it unblocks, and the
    # broker may carry out two requests sent together in either order.
    async def run(group: list[Decision]) -> list[tuple[Outcome, float] | None]:
        return await in_waves(
            group,
            lambda d: _execute(broker, d, resources, now, clock, claims=claims, rules=rules),
            limit=limit,
        )

    # Decisions that send nothing (nearly all of a resync's) are answered here,
    # not through the pool: its workers would run them back to back without
    # handing the loop back, one block of ~50 ms at 10,000 resources.
    first = [d for d, _ in writing if d.writes and d.action is not Action.CREATE]
    then = [d for d, _ in writing if d.action is Action.CREATE]
    answered = dict(zip(map(id, first), await run(first), strict=True))
    answered.update(zip(map(id, then), await run(then), strict=True))
    at = clock()
    done: list[Done] = []
    for i, (decision, trigger) in enumerate(writing):
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
        answer = answered[id(decision)] if decision.writes else (without_write(decision), at)
        if answer is None:
            out.skipped.append(decision.resource.stream)
            continue
        outcome, answered_at = answer
        res = outcome.decision.resource
        if outcome.result is Result.FAILED:
            assert outcome.error is not None
            present = present_after(outcome.decision)
            failed.append(Failed(res, outcome.error, trigger, present, outcome.decision))
            continue
        if outcome.observed is not None:
            out.seen[res.stream] = outcome.observed
        done.append(Done(outcome, trigger, batch.arrived(res.stream), answered_at))
    out.report = replace(
        head,
        finished=clock(),
        done=tuple(done),
        failed=tuple(failed),
        held=tuple(held),
        facts=cluster_facts(resources, out.listed) if out.listed is not None else None,
        listed=frozenset(out.listed) if out.listed is not None else None,
        writes=sum(broker.requests[verb] for verb in WRITES) - writes_before,
        unchanged=unchanged,
    )
    return out


async def _still_there(
    broker: Broker, targets: list[tuple[Resource, Trigger]]
) -> list[tuple[Resource, Trigger]]:
    """The targets left to read once many second looks are answered by one
    list of names. A second look after a write (`Trigger.VERIFY`) is there
    for a delete whose advisory the broker dropped: only whether the stream
    still exists matters, and in a storm of deletes these looks would be a
    STREAM.INFO per heal on a broker whose API is what the storm saturates.
    A stream still there needs no read; a missing one is read (and so
    re-created) like any other."""
    verify = [r.stream for r, t in targets if t is Trigger.VERIFY]
    if len(verify) < NAMES_FROM or not isinstance(broker, StreamNames):
        return targets
    try:
        names = await broker.stream_names()
    except BrokerError:
        return targets  # each is read instead, and fails or not on its own
    return [(r, t) for r, t in targets if t is not Trigger.VERIFY or r.stream not in names]


async def _info(broker: Broker, res: Resource) -> Observed | BrokerError | None:
    try:
        return await broker.stream_info(res.stream)
    except BrokerError as exc:
        return exc


async def _execute(
    broker: Broker,
    decision: Decision,
    resources: Sequence[Resource],
    now: datetime,
    clock: Callable[[], float],
    *,
    claims: Claims | None,
    rules: Rules,
) -> tuple[Outcome, float] | None:
    """The decision carried out, and when the broker answered; None when
    another pass is writing the stream."""
    stream = decision.resource.stream
    if claims is not None and decision.writes and not claims.take(stream):
        return None
    try:
        if decision.action is Action.CREATE:
            rules.creating(stream)
        return await execute(broker, decision, resources, now), clock()
    finally:
        if claims is not None and decision.writes:
            claims.give_back(stream)
