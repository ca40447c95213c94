"""`daemon.memo.InSyncMemo` answers exactly what the planner would.

A resync at 10,000 declared resources decides every one of them; the memo
hands back the in-sync decision of an earlier pass when the resource, the
server and the reported config are the same, and the planner is asked only
otherwise. Checked against the planner itself over random declarations,
configs other clients left, the specs this process wrote before, stream
states, clocks and servers, observed in any order and any number of times.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kanade_watchdog.config.load import parse
from kanade_watchdog.core.plan import Action, Decision, Observed, decide
from kanade_watchdog.core.reports import Cut
from kanade_watchdog.core.result import Result
from kanade_watchdog.core.serverinfo import ServerInfo
from kanade_watchdog.daemon.memo import InSyncMemo
from kanade_watchdog.daemon.queue import Batch
from kanade_watchdog.daemon.worker import Worker
from kanade_watchdog.model.errors import BrokerUnavailable
from kanade_watchdog.model.events import Trigger
from kanade_watchdog.model.resources import Kind, Resource
from tests.capture import Capture
from tests.fakebroker import FakeBroker, SlowBroker
from tests.test_converge import (
    NOW,
    Declared,
    Foreign,
    as_stored,
    declarations,
    present_mostly,
)
from tests.test_pass_pacing import converged, many
from tests.test_worker import FakeClock


class FlakyInfo(FakeBroker):
    """Its stream reads fail while `failing`."""

    def __init__(self, inner: FakeBroker) -> None:
        super().__init__()
        self.streams = inner.streams
        self.failing = False

    async def stream_info(self, name: str) -> Observed | None:
        if self.failing:
            raise BrokerUnavailable(f"no answer on $JS.API.STREAM.INFO.{name} within 2s")
        return await super().stream_info(name)


SERVERS = [None, ServerInfo((2, 15, 1), 3, "2.15.1"), ServerInfo((2, 10, 22), None, "2.10.22")]


def looks(resource: Resource, foreign: Any, stored: bool) -> Observed | None:
    if foreign is None:
        return None
    config = foreign.config(resource)
    if stored:  # what a write of the planner's answer leaves: often in sync
        send = decide(resource, Observed(config=config), NOW).send
        config = as_stored(send) if send is not None else config
    return Observed(config=config)


@settings(max_examples=300, deadline=None)
@given(
    declared=declarations(),
    observations=st.lists(
        st.tuples(
            present_mostly(),
            st.booleans(),  # the config as the planner's write leaves it
            st.sampled_from([0, 50]),  # messages
            st.sampled_from([frozenset(), frozenset({"0123456789abcdef"})]),
            st.integers(0, 3),  # server
            st.integers(0, 400),  # days later
            st.booleans(),  # leaderless
        ),
        min_size=1,
        max_size=8,
    ),
    repeat=st.integers(1, 3),
)
def test_the_memo_answers_what_the_planner_answers(
    declared: Declared, observations: list[tuple[Any, ...]], repeat: int
) -> None:
    """Every answer of the memo equals the planner's for the same inputs."""
    resource = declared.resource("X1")
    memo = InSyncMemo()
    for foreign, stored, messages, mine, server_at, days, leaderless in observations:
        server = SERVERS[server_at % len(SERVERS)]
        now = NOW + timedelta(days=days)
        seen = looks(resource, foreign, stored)
        if seen is not None:
            state = {"messages": messages, "bytes": messages * 100}
            seen = Observed(config=seen.config, state=state, leaderless=leaderless)

        def planner(res: Resource, observed: Observed | None) -> Decision:
            return decide(res, observed, now, own_hashes=mine, server=server)  # noqa: B023

        for _ in range(repeat):
            assert memo.decide(resource, seen, server, planner) == planner(resource, seen)


def test_an_unchanged_in_sync_resource_is_not_planned_again() -> None:
    """The second look at an unchanged in-sync resource does not ask the
    planner, nor does an equal resource a reload made; a changed config, another
    server or a changed declaration do."""
    declared = Declared(Kind.STREAM, {"subjects": ["a"]}, spec_version=1, writer="w1")
    res = declared.resource("X1")
    seen = looks(res, Foreign({}, ("a",), None, {}), stored=True)
    assert seen is not None
    asked: list[str] = []

    def planner(r: Resource, observed: Observed | None) -> Decision:
        asked.append(r.name)
        return decide(r, observed, NOW)

    memo = InSyncMemo()
    assert memo.decide(res, seen, None, planner).action is Action.IN_SYNC
    again = Observed(config=dict(seen.config), state={"messages": 7})  # a new list, new state
    assert memo.decide(res, again, None, planner).action is Action.IN_SYNC
    assert len(asked) == 1
    memo.decide(res, Observed(config={**seen.config, "description": "theirs"}), None, planner)
    memo.decide(res, seen, SERVERS[1], planner)
    memo.decide(declared.resource("X1"), seen, SERVERS[1], planner)  # a reload left it alone
    assert len(asked) == 3
    raised = Declared(Kind.STREAM, {"subjects": ["a"]}, spec_version=2, writer="w1")
    memo.decide(raised.resource("X1"), seen, SERVERS[1], planner)
    assert len(asked) == 4


def test_a_server_too_old_for_a_declared_field_is_planned_again() -> None:
    """In sync on 2.15.1; the same config seen through a 2.10 server blocks
    the resource (the field it declares is newer than that server)."""
    res = parse(
        {"streams": {"X1": {"subjects": ["x1.a"], "allow_msg_ttl": True}}}, "memo.toml"
    ).resources[0]
    send = decide(res, None, NOW).send
    assert send is not None
    seen = Observed(config=as_stored(send))
    memo = InSyncMemo()

    def planner_on(server: ServerInfo | None) -> Any:
        return lambda r, o: decide(r, o, NOW, server=server)

    assert memo.decide(res, seen, SERVERS[1], planner_on(SERVERS[1])).action is Action.IN_SYNC
    old = memo.decide(res, seen, SERVERS[2], planner_on(SERVERS[2]))
    assert old.action is Action.BLOCKED
    assert old.too_new


def test_only_in_sync_decisions_are_kept() -> None:
    """A write's decision depends on the stream's state and the clock (what an
    update would discard): it is never handed back, and a look that is no
    longer in sync drops what was kept."""
    declared = Declared(Kind.STREAM, {"subjects": ["a"]}, spec_version=1, writer="w1")
    res = declared.resource("X1")
    seen = looks(res, Foreign({}, ("a",), None, {}), stored=True)
    assert seen is not None
    memo = InSyncMemo()
    memo.decide(res, seen, None, lambda r, o: decide(r, o, NOW))
    assert len(memo) == 1
    drifted = Observed(config={**seen.config, "subjects": ["x1.b"]})
    assert memo.decide(res, drifted, None, lambda r, o: decide(r, o, NOW)).writes
    assert len(memo) == 0
    memo.decide(res, None, None, lambda r, o: decide(r, o, NOW))
    assert len(memo) == 0


# --- in the worker: what is unchanged is not reported again ------------------------------


async def test_a_resync_reports_only_what_changed() -> None:
    """The first pass reports every resource; a resync with nothing changed
    reports none of them (counted as unchanged, in sync), and one whose
    config drifted meanwhile is reported with its update."""
    config = many(300)
    broker = converged(config)
    worker = Worker(config, reporter=Capture())
    worker.attach(broker)
    first = await worker.run_pass(Batch(full=Trigger.STARTUP))
    assert len(first.done) == 300
    broker.drift("S00007", subjects=["elsewhere.>"])
    second = await worker.run_pass(Batch(full=Trigger.RESYNC))
    assert [d.resource.stream for d in second.done] == ["S00007"]
    assert second.unchanged == 299
    assert (second.looked, second.in_sync) == (300, 299)
    third = await worker.run_pass(Batch(full=Trigger.RESYNC))  # its first in-sync look
    assert ([d.resource.stream for d in third.done], third.unchanged) == (["S00007"], 299)
    fourth = await worker.run_pass(Batch(full=Trigger.RESYNC))
    assert (len(fourth.done), fourth.unchanged) == (0, 300)


async def test_a_resource_that_failed_is_reported_in_sync_again() -> None:
    """A read that failed is reported; the next in-sync look at the same
    config is news (the reporters say it recovered), not unchanged."""
    config = many(3)
    broker = FlakyInfo(converged(config))
    clock = FakeClock()
    worker = Worker(config, reporter=Capture(), clock=clock)
    worker.attach(broker)
    await worker.run_pass(Batch(full=Trigger.STARTUP))
    broker.failing = True
    worker.mark("S00001", Trigger.ADVISORY)
    failed = await worker.run_pass(worker.queue.take())
    assert [f.resource.stream for f in failed.failed] == ["S00001"]
    broker.failing = False
    clock.advance(3600)  # its backoff has run out
    again = await worker.run_pass(Batch(full=Trigger.RESYNC))
    assert [d.resource.stream for d in again.done] == ["S00001"]
    assert again.done[0].result is Result.IN_SYNC


async def test_a_cut_pass_leaves_nothing_taken_as_reported() -> None:
    """The first pass finds two streams in sync and is cut (the connection
    goes) while it creates the third: nobody was told about the two, so the
    pass after the reconnect reports them, and READY can follow."""
    config = many(3)
    inner = converged(config)
    inner.delete("S00002")
    slow = SlowBroker(inner, hold=frozenset({"create"}))
    worker = Worker(config, reporter=Capture())
    worker.attach(slow)
    cut = asyncio.create_task(worker.run_pass(Batch(full=Trigger.STARTUP)))
    await slow.held.wait()
    worker.detach()
    assert (await cut).cut is Cut.LOST
    slow.release.set()
    worker.attach(slow)
    again = await worker.run_pass(Batch(full=Trigger.RECONNECT))
    assert sorted(d.resource.stream for d in again.done) == ["S00000", "S00001", "S00002"]


async def test_a_stream_declared_again_after_a_reload_is_reported_again() -> None:
    """Dropped by one reload and declared again by the next: its board entry
    is new, so its in-sync outcome must be reported, not taken as unchanged."""
    config = many(3)
    broker = converged(config)
    worker = Worker(config, reporter=Capture())
    worker.attach(broker)
    await worker.run_pass(Batch(full=Trigger.STARTUP))
    smaller = parse(
        {
            "nats": {"servers": ["nats://127.0.0.1:4222"]},
            "streams": {"S00000": {"subjects": ["s0.>"]}},
        },
        "test.toml",
    )
    worker.reload(smaller)
    await worker.run_pass(worker.queue.take())
    worker.reload(config)
    again = await worker.run_pass(worker.queue.take())
    assert sorted(d.resource.stream for d in again.done) == ["S00001", "S00002"]
    assert again.unchanged == 1
