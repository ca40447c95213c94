"""The planner's immutability table is nats-server 2.15.1's: every field the
planner blocks, the broker refuses to update (10012); every declared change
the planner sends as an update, the broker accepts in place, and it then
plans in sync. Against a real broker, through the raw API."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.client import Client

from kanade_watchdog.core.consumer_plan import IMMUTABLE, decide
from kanade_watchdog.core.plan import Action
from kanade_watchdog.model.consumers import Consumer
from tests.jsapi import ok, request

S = 1_000_000_000
PULL: dict[str, Any] = {"ack_policy": "explicit"}
PUSH: dict[str, Any] = {"ack_policy": "explicit", "deliver_subject": "d"}

# (the config it was created with, the declared change)
REFUSED: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (PULL, {"deliver_policy": "new"}),
    (PULL, {"deliver_policy": "by_start_sequence", "opt_start_seq": 5}),
    (PULL, {"ack_policy": "all"}),
    (PULL, {"replay_policy": "original"}),
    (PULL, {"mem_storage": True}),
    (PULL, {"max_waiting": 10}),
    ({**PUSH, "idle_heartbeat": 5 * S}, {"deliver_subject": "d", "idle_heartbeat": 9 * S}),
]
IN_PLACE: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (PULL, {"ack_wait": 5 * S, "max_deliver": 3, "max_ack_pending": 10}),
    (PULL, {"filter_subjects": ("s.a", "s.b")}),
    (PULL, {"filter_subject": "s.a", "description": "x", "headers_only": True}),
    (PULL, {"backoff": (S, 2 * S), "max_deliver": 5}),
    (PULL, {"max_batch": 3, "max_expires": 3 * S, "max_bytes": 3, "inactive_threshold": 3600 * S}),
    (PULL, {"priority_groups": ("g",), "priority_policy": "overflow"}),
    (PULL, {"metadata": (("team", "ops"),), "num_replicas": 1}),
    (PUSH, {"deliver_subject": "e", "deliver_group": "g", "rate_limit_bps": 1000}),
    (PUSH, {"deliver_subject": "d", "sample_freq": "50%"}),
]


async def _created(nc: Client, config: dict[str, Any]) -> dict[str, Any]:
    await ok(nc, "$JS.API.STREAM.CREATE.S", {"name": "S", "subjects": ["s.>"]})
    body = {"stream_name": "S", "config": {**config, "durable_name": "c"}, "action": "create"}
    answer = await ok(nc, "$JS.API.CONSUMER.CREATE.S.c", body)
    return dict(answer["config"])


@pytest.mark.parametrize(("start", "change"), REFUSED)
async def test_what_the_planner_blocks_the_broker_refuses(
    client: Client, start: dict[str, Any], change: dict[str, Any]
) -> None:
    """Blocked, with the broker's reason; and the update it would take is refused (10012)."""
    observed = await _created(client, start)
    declared = Consumer(stream="S", durable="c", declared=change)
    d = decide(declared, observed)
    assert d.action is Action.BLOCKED, d
    assert any(IMMUTABLE[c.field] in d.reason for c in d.changes)
    forced = {**observed, **{k: list(v) if isinstance(v, tuple) else v for k, v in change.items()}}
    body = {"stream_name": "S", "config": forced, "action": "update"}
    answer = await request(client, "$JS.API.CONSUMER.CREATE.S.c", body)
    assert answer.get("error", {}).get("err_code") == 10012, answer


@pytest.mark.parametrize(("start", "change"), IN_PLACE)
async def test_what_the_planner_updates_the_broker_changes_in_place(
    client: Client, start: dict[str, Any], change: dict[str, Any]
) -> None:
    """An update is accepted with action "update", and the result plans in sync."""
    observed = await _created(client, start)
    declared = Consumer(stream="S", durable="c", declared=change)
    d = decide(declared, observed)
    assert d.action is Action.UPDATE, d
    assert d.send is not None
    body = {"stream_name": "S", "config": dict(d.send), "action": d.api_action}
    answer = await ok(client, "$JS.API.CONSUMER.CREATE.S.c", body)
    assert decide(declared, answer["config"]).action is Action.IN_SYNC
    info = await ok(client, "$JS.API.CONSUMER.INFO.S.c")
    assert decide(declared, info["config"]).action is Action.IN_SYNC


async def test_an_update_never_creates_and_a_create_never_overwrites(client: Client) -> None:
    """The two API actions the planner uses keep their promise on the broker."""
    await _created(client, PULL)
    missing = {"stream_name": "S", "config": {"durable_name": "x"}, "action": "update"}
    answer = await request(client, "$JS.API.CONSUMER.CREATE.S.x", missing)
    assert answer.get("error", {}).get("err_code") == 10149, answer
    other = {"stream_name": "S", "config": {"durable_name": "c", "description": "z"}}
    answer = await request(client, "$JS.API.CONSUMER.CREATE.S.c", {**other, "action": "create"})
    assert answer.get("error", {}).get("err_code") == 10148, answer
