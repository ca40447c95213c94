"""The consumer planner: a declared consumer + what the broker holds -> one
decision. Pure, no I/O.

The same decisions as for streams (`plan.Action`): `create` (missing; at the
resume position when one was kept), `update` (declared fields drifted and
the server can change them in place: the update is laid over the observed
config), `in_sync` (only declared fields count, so an application's own
settings are never drift), `blocked` (the server cannot make the change in
place; nothing is deleted to make it), `newer_spec` (a watchdog with a
higher spec_version wrote it). The immutable fields are nats-server 2.15.1's
(`consumer.go`, `checkNewConsumerConfig`), each verified on a real broker in
tests/test_consumer_plan_broker.py. `apply` sends `send` with action
"create" or "update", so an update never creates and a create never
overwrites.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kanade_watchdog.core import consumer_desired as cd
from kanade_watchdog.core import desired
from kanade_watchdog.core.plan import Action, Change
from kanade_watchdog.core.result import Result
from kanade_watchdog.model.consumers import Consumer

# field -> why the server refuses to change it on an existing consumer
IMMUTABLE: dict[str, str] = {
    "deliver_policy": "deliver policy can not be updated",
    "opt_start_seq": "the start sequence can not be updated",
    "opt_start_time": "the start time can not be updated",
    "ack_policy": "ack policy can not be updated",
    "replay_policy": "replay policy can not be updated",
    "mem_storage": "storage type can not be updated",
    "max_waiting": "max waiting can not be updated",
    "idle_heartbeat": "heart beats can not be updated",
    "flow_control": "flow control goes with heart beats, which can not be updated",
    "pause_until": "a pause changes through the pause API, not an update",
}


@dataclass(frozen=True)
class ConsumerDecision:
    consumer: Consumer
    action: Action
    changes: tuple[Change, ...] = ()
    send: Mapping[str, Any] | None = None  # the config for create/update
    reason: str = ""  # why blocked
    resume_from: int | None = None  # a create that starts where the lost one stopped

    @property
    def writes(self) -> bool:
        return self.action in (Action.CREATE, Action.UPDATE)

    @property
    def api_action(self) -> str:
        """The `action` of the CONSUMER.CREATE request."""
        return "create" if self.action is Action.CREATE else "update"


@dataclass(frozen=True)
class ConsumerOutcome:
    """What became of one decision: `broker.consumers.execute` fills it in."""

    decision: ConsumerDecision
    result: Result
    error: str = ""
    transient: bool = True  # a failure: the broker error's retry policy
    code: str = ""  # a failure: the broker's err_code, else the error's class name

    @property
    def ok(self) -> bool:
        """As for streams: blocked and newer_spec are not converged."""
        return self.result in (Result.CREATED, Result.UPDATED, Result.IN_SYNC)


def diff(consumer: Consumer, observed: Mapping[str, Any]) -> list[Change]:
    """(field, current, desired) for every declared field that differs."""
    resumed = cd.resumed_from(observed) is not None
    out: list[Change] = []
    for field in consumer.declared:
        if resumed and field in cd.START_FIELDS:
            continue  # started where the lost consumer stopped, by design
        current = cd.observed_value(observed, field)
        wanted = cd.declared_value(consumer, field)
        if not cd.same(field, current, wanted):
            out.append(Change(field, current, wanted))
    return out


def _shape_problem(consumer: Consumer, observed: Mapping[str, Any]) -> str | None:
    push_now = bool(observed.get("deliver_subject"))
    if push_now and not consumer.is_push:
        return "a push consumer is on the broker, a pull consumer is declared (10012)"
    if consumer.is_push and not push_now:
        return "a pull consumer is on the broker, a push consumer is declared (10012)"
    return None


def decide(
    consumer: Consumer,
    observed: Mapping[str, Any] | None,
    *,
    resume_from: int | None = None,
) -> ConsumerDecision:
    """`observed` is the consumer's config as the broker reports it, None when
    it is missing. `resume_from` (`position.resume_from`) applies to a create
    only, and only when the consumer asks to resume."""
    if observed is None:
        start = resume_from if consumer.resume else None
        return ConsumerDecision(
            consumer,
            Action.CREATE,
            send=cd.create_config(consumer, resume_from=start),
            resume_from=start,
        )
    mark = desired.observed_marker(observed)
    if mark is not None and mark.spec_version > consumer.spec_version and not consumer.force_spec:
        return ConsumerDecision(
            consumer,
            Action.NEWER_SPEC,
            reason=f"written under spec_version {mark.spec_version}, "
            f"this file is {consumer.spec_version}",
        )
    shape = _shape_problem(consumer, observed)
    if shape:
        return ConsumerDecision(consumer, Action.BLOCKED, reason=shape)
    changes = tuple(diff(consumer, observed))
    if not changes:
        return ConsumerDecision(consumer, Action.IN_SYNC)
    fixed = [c for c in changes if c.field in IMMUTABLE]
    if fixed:
        reasons = "; ".join(f"{c.field}: {IMMUTABLE[c.field]}" for c in fixed)
        return ConsumerDecision(consumer, Action.BLOCKED, changes=changes, reason=reasons)
    return ConsumerDecision(
        consumer, Action.UPDATE, changes=changes, send=cd.overlay(consumer, observed)
    )


def plan_all(
    consumers: Iterable[Consumer],
    *,
    streams: Mapping[str, Mapping[str, Any]],
    observed: Mapping[str, Mapping[str, Any]],
    declared_streams: Iterable[str] = (),
    resume_at: Mapping[str, int | None] | None = None,
) -> list[ConsumerDecision]:
    """One decision per declared consumer. `streams` maps the streams that
    exist to their config; `observed` maps `STREAM/DURABLE` to the consumer's
    config (absent: missing); `resume_at` maps it to its resume sequence.
    A missing consumer on a missing stream is created after its stream when
    the stream is declared, and blocked when nobody here creates it."""
    ours = set(declared_streams)
    out: list[ConsumerDecision] = []
    for consumer in consumers:
        if consumer.stream not in streams and consumer.stream not in ours:
            out.append(
                ConsumerDecision(
                    consumer,
                    Action.BLOCKED,
                    reason=f"its stream {consumer.stream} does not exist and is not declared",
                )
            )
            continue
        start = (resume_at or {}).get(consumer.name)
        out.append(decide(consumer, observed.get(consumer.name), resume_from=start))
    return out
