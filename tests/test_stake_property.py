"""Property, against a real nats-server: no update loses a stored message that
`plan` did not show at stake, and `protect = true` refuses every such update.

Each example fills a fresh stream (random discard policy and per-subject limit,
sometimes a consumer that acknowledged part of it, sometimes a discard-new cap
already lowered below usage), declares a random update of retention, discard,
max_bytes, max_msgs, max_age, max_msgs_per_subject and subjects, decides it
twice (as declared and with protect on), and applies the unprotected decision
through the product's own `Broker` over a nats-py connection. Whenever the
broker's message count then drops, the decision must have had a stake that
`loses_data`, and the protected one must have been blocked. One broker serves
every example; no stream is ever deleted.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import nats
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from kanade_watchdog.broker.api import Broker
from kanade_watchdog.config.load import parse
from kanade_watchdog.core.plan import Action, decide
from kanade_watchdog.model.errors import ApiError
from tests.natsserver import NatsServer

LEAVES = ("a", "b", "c")
_names = itertools.count()


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One broker for every example (a fresh stream each)."""
    srv = NatsServer(tmp_path_factory.mktemp("stake")).start()
    yield srv.url
    srv.stop()


@dataclass(frozen=True)
class Filled:
    """How the stream is made and filled before the update."""

    discard: str
    per_subject: int  # -1: none
    messages: tuple[str, ...]  # the leaf subject of each message, in order
    size: int
    consumer_acks: int | None  # None: no consumer; else how many it acknowledged
    lowered_cap: bool  # discard new with max_bytes already below usage


@dataclass(frozen=True)
class Update:
    """The declared update; None leaves a field undeclared. Caps are fractions
    of what the stream holds, resolved once it is filled."""

    retention: str | None
    discard: str | None
    max_bytes: float | None  # <= 0: "unlimited"
    max_msgs: float | None
    max_age: str | int | None  # 0: no limit
    per_subject: int | None
    subjects: tuple[str, ...]


filled = st.builds(
    Filled,
    discard=st.sampled_from(["old", "new"]),
    per_subject=st.sampled_from([-1, 30]),
    messages=st.lists(st.sampled_from(LEAVES), min_size=1, max_size=40).map(tuple),
    size=st.integers(50, 400),
    consumer_acks=st.none() | st.integers(0, 10),
    lowered_cap=st.booleans(),
)
fraction = st.none() | st.sampled_from([0.0, 0.3, 0.8, 1.0, 2.0])
updates = st.builds(
    Update,
    retention=st.sampled_from([None, "limits", "interest"]),
    discard=st.sampled_from([None, "old", "new"]),
    max_bytes=fraction,
    max_msgs=fraction,
    max_age=st.sampled_from([None, 0, "100ms", "1h"]),
    per_subject=st.sampled_from([None, -1, 1, 2, 50]),
    subjects=st.sets(st.sampled_from(LEAVES), min_size=1).map(lambda s: tuple(sorted(s))),
)


def _cap(fraction: float, used: int) -> int | str:
    return "unlimited" if fraction <= 0 else max(1, int(used * fraction))


def _declaration(name: str, update: Update, messages: int, stored: int) -> dict[str, Any]:
    table: dict[str, Any] = {"subjects": [f"{name.lower()}.{leaf}" for leaf in update.subjects]}
    if update.retention is not None:
        table["retention"] = update.retention
    if update.discard is not None:
        table["discard"] = update.discard
    if update.max_bytes is not None:
        table["max_bytes"] = _cap(update.max_bytes, stored)
    if update.max_msgs is not None:
        table["max_msgs"] = _cap(update.max_msgs, messages)
    if update.max_age is not None:
        table["max_age"] = update.max_age
    if update.per_subject is not None:
        table["max_msgs_per_subject"] = (
            "unlimited" if update.per_subject < 0 else update.per_subject
        )
    return {"streams": {name: table}}


async def _fill(nc: Client, broker: Broker, name: str, setup: Filled) -> None:
    prefix = name.lower()
    await broker.create(
        {
            "name": name,
            "subjects": [f"{prefix}.{leaf}" for leaf in LEAVES],
            "discard": setup.discard if not setup.lowered_cap else "new",
            "max_msgs_per_subject": setup.per_subject,
        }
    )
    js = nc.jetstream()
    for leaf in setup.messages:
        await js.publish(f"{prefix}.{leaf}", b"x" * setup.size)
    if setup.consumer_acks is not None:
        sub = await js.pull_subscribe(f"{prefix}.>", durable="reader", stream=name)
        if setup.consumer_acks:
            for msg in await sub.fetch(setup.consumer_acks, timeout=2):
                await msg.ack_sync()
        await sub.unsubscribe()
    if setup.lowered_cap:
        info = await broker.stream_info(name)
        assert info is not None
        config = dict(info.config)
        config["max_bytes"] = max(1, int(info.state["bytes"]) // 2)
        await broker.update(config)


async def _example(url: str, setup: Filled, update: Update) -> None:
    name = f"P{next(_names)}"
    nc = await nats.connect(url)
    try:
        broker = Broker(nc, timeout=5.0)
        await _fill(nc, broker, name, setup)
        if update.max_age == "100ms":
            await asyncio.sleep(0.25)  # every message is then older than the new max_age
        before = await broker.stream_info(name)
        assert before is not None
        messages = int(before.state["messages"])
        stored = int(before.state["bytes"])
        document = _declaration(name, update, messages, stored)
        resource = parse(document, "property.toml").resources[0]
        now = datetime.now(UTC).replace(tzinfo=None)
        decision = decide(resource, before, now)
        guarded = decide(replace(resource, protect=True), before, now)
        if decision.action is not Action.UPDATE:
            event(f"decision {decision.action}")
            return
        assert decision.send is not None
        try:
            await broker.update(decision.send)
        except ApiError as exc:
            event(f"refused by the broker ({exc.err_code})")
            after = await broker.stream_info(name)
            assert after is not None
            assert int(after.state["messages"]) == messages
            return
        await asyncio.sleep(0.05)  # expiry and interest clean-up run right after the update
        after = await broker.stream_info(name)
        assert after is not None
        dropped = messages - int(after.state["messages"])
        if dropped > 0:
            event("messages dropped")
            assert decision.loses_data, (document, decision.at_stake, dropped)
            assert guarded.action is Action.BLOCKED, (document, guarded)
            assert "protect = true" in guarded.reason
        elif guarded.action is Action.BLOCKED:
            event("refused under protect, nothing would have been lost")
        else:
            event("nothing lost")
    finally:
        await nc.close()


LIMITED = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@LIMITED
@example(  # issue 10 item 1: retention limits -> interest, no consumer
    setup=Filled("old", -1, ("a",) * 30, 100, None, False),
    update=Update("interest", None, None, None, None, None, LEAVES),
)
@example(  # issue 10 item 2: discard new held over a lowered cap, then discard old
    setup=Filled("new", -1, ("a", "b") * 15, 300, None, True),
    update=Update(None, "old", None, None, None, None, LEAVES),
)
@example(  # a consumer acknowledged part of the stream, then interest
    setup=Filled("old", -1, ("a", "b", "c") * 5, 100, 6, False),
    update=Update("interest", None, None, None, None, None, LEAVES),
)
@example(  # history trimmed under discard new
    setup=Filled("new", 30, ("a", "b") * 10, 100, None, False),
    update=Update(None, None, None, None, None, 2, LEAVES),
)
@example(  # a shorter max_age expires everything stored
    setup=Filled("old", -1, ("c",) * 5, 100, None, False),
    update=Update(None, None, None, None, "100ms", None, ("c",)),
)
@given(setup=filled, update=updates)
def test_no_message_is_lost_unannounced(broker_url: str, setup: Filled, update: Update) -> None:
    """Whenever an applied update makes the broker's message count drop, plan showed
    data at stake that loses data, and protect = true refused the same update."""
    asyncio.run(_example(broker_url, setup, update))


def test_subject_removal_keeps_stored_messages(broker_url: str) -> None:
    """Measured fact the planner relies on: removing a subject keeps the messages
    stored under it, so it is not shown at stake."""

    async def run() -> None:
        nc = await nats.connect(broker_url)
        try:
            broker = Broker(nc, timeout=5.0)
            setup = Filled("old", -1, ("a", "b") * 10, 100, None, False)
            name = f"P{next(_names)}"
            await _fill(nc, broker, name, setup)
            before = await broker.stream_info(name)
            assert before is not None
            resource = parse(
                {"streams": {name: {"subjects": [f"{name.lower()}.a"], "protect": True}}},
                "property.toml",
            ).resources[0]
            decision = decide(resource, before, datetime.now(UTC).replace(tzinfo=None))
            assert decision.action is Action.UPDATE
            assert decision.stakes == ()
            assert decision.send is not None
            await broker.update(decision.send)
            after = await broker.stream_info(name)
            assert after is not None
            assert after.state["messages"] == 20
        finally:
            await nc.close()

    asyncio.run(run())


def test_discard_new_cap_below_usage_loses_nothing_on_the_broker(broker_url: str) -> None:
    """Measured fact behind "new writes would be refused": with discard new, caps
    lowered below usage keep every message."""

    async def run() -> None:
        nc = await nats.connect(broker_url)
        try:
            broker = Broker(nc, timeout=5.0)
            name = f"P{next(_names)}"
            await _fill(nc, broker, name, Filled("new", -1, ("a",) * 40, 200, None, False))
            before = await broker.stream_info(name)
            assert before is not None
            resource = parse(
                {
                    "streams": {
                        name: {
                            "subjects": [f"{name.lower()}.{leaf}" for leaf in LEAVES],
                            "max_bytes": 1000,
                            "max_msgs": 5,
                            "protect": True,
                        }
                    }
                },
                "property.toml",
            ).resources[0]
            decision = decide(resource, before, datetime.now(UTC).replace(tzinfo=None))
            assert decision.action is Action.UPDATE
            assert [s.loses_data for s in decision.stakes] == [False, False]
            assert decision.send is not None
            await broker.update(decision.send)
            after = await broker.stream_info(name)
            assert after is not None
            assert after.state["messages"] == 40
        finally:
            await nc.close()

    asyncio.run(run())
