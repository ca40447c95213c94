"""`daemon.memo.InSyncMemo` answers exactly what the planner would.

A resync at 10,000 declared resources decides every one of them; the memo
hands back the in-sync decision of an earlier pass when the resource, the
server and the reported config are the same, and the planner is asked only
otherwise. Checked against the planner itself over random declarations,
configs other clients left, the specs this process wrote before, stream
states, clocks and servers, observed in any order and any number of times.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kanade_watchdog.config.load import parse
from kanade_watchdog.core.plan import Action, Decision, Observed, decide
from kanade_watchdog.core.serverinfo import ServerInfo
from kanade_watchdog.daemon.memo import InSyncMemo
from kanade_watchdog.model.resources import Kind, Resource
from tests.test_converge import (
    NOW,
    Declared,
    Foreign,
    as_stored,
    declarations,
    present_mostly,
)

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
