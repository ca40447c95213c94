"""plan, apply, check and --json with declared consumers, against a real
broker: a create with exactly the declared values, a second apply with zero
writes, an application's consumer with other settings in sync, drift
reverted in place keeping the consumer's position, an immutable difference
blocked; push and pull consumers and several filter subjects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from tests.audit import ApiAudit
from tests.helpers_streams import new_audit, run_cli, watchdog_audit
from tests.jsapi import ok
from tests.natsserver import NatsServer

S = 1_000_000_000
DECLARATION = """
[nats]
servers = ["{url}"]
name = "kanade-watchdog"

[streams.S]
subjects = ["s.>"]

[consumers.S.pull]
ack_policy = "explicit"
ack_wait = "5s"
max_deliver = 4
filter_subjects = ["s.a", "s.b.>"]
metadata = {{ team = "ops" }}

[consumers.S.push]
deliver_subject = "deliver.push"
ack_policy = "explicit"
idle_heartbeat = "5s"
flow_control = true
filter_subject = "s.c"
"""


@pytest.fixture
async def audit(client: Client) -> AsyncIterator[ApiAudit]:
    async with watchdog_audit(client) as seen:
        yield seen


def declaration(server: NatsServer, tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "watchdog.toml"
    path.write_text(DECLARATION.format(url=server.url) + extra, encoding="utf-8")
    return path


async def info(nc: Client, durable: str) -> dict[str, Any]:
    return await ok(nc, f"$JS.API.CONSUMER.INFO.S.{durable}")


async def test_apply_creates_exactly_as_declared_then_writes_nothing(
    server: NatsServer, client: Client, tmp_path: Path, audit: ApiAudit
) -> None:
    """Push and pull, several filters: created as declared; the second apply writes nothing."""
    path = declaration(server, tmp_path)
    plan = await run_cli("plan", "--json", config=path)
    assert plan.code == 2
    kinds = {(r["kind"], r["name"]): r["action"] for r in plan.json()["resources"]}
    assert kinds[("consumer", "S/pull")] == "create"
    assert kinds[("consumer", "S/push")] == "create"
    first = await run_cli("apply", config=path)
    assert first.code == 0, first.stdout + first.stderr
    assert "consumer S/pull: created" in first.stdout
    pull = (await info(client, "pull"))["config"]
    assert pull["ack_wait"] == 5 * S
    assert pull["max_deliver"] == 4
    assert sorted(pull["filter_subjects"]) == ["s.a", "s.b.>"]
    assert pull["metadata"]["team"] == "ops"
    assert pull["metadata"]["kanade.managed_by"] == "kanade-watchdog"
    push = (await info(client, "push"))["config"]
    assert push["deliver_subject"] == "deliver.push"
    assert push["idle_heartbeat"] == 5 * S
    assert push["filter_subject"] == "s.c"
    await audit.settle()
    assert audit.count("CONSUMER.CREATE") == 2
    again = await new_audit(client)
    second = await run_cli("apply", config=path)
    assert second.code == 0
    await again.settle()
    assert again.writes == 0, again.verbs
    assert again.count("CONSUMER.LIST") == 1  # one page for one stream
    in_sync = await run_cli("plan", config=path)
    assert in_sync.code == 0, in_sync.stdout
    check = await run_cli("check", config=path)
    assert check.code == 0, check.stdout
    assert "3/3 in sync" in check.stdout
    await ok(
        client,
        "$JS.API.CONSUMER.CREATE.S.pull",
        {"stream_name": "S", "config": {**pull, "max_deliver": 9}, "action": "update"},
    )
    drifted = await run_cli("check", config=path)
    assert drifted.code == 1, drifted.stdout
    assert "consumer:S/pull" in drifted.stdout


async def test_an_application_consumer_with_other_settings_is_in_sync(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """A consumer the app created with undeclared settings of its own is left as it is."""
    await ok(client, "$JS.API.STREAM.CREATE.S", {"name": "S", "subjects": ["s.>"]})
    app = {
        "durable_name": "only",
        "ack_policy": "explicit",
        "max_ack_pending": 7,
        "description": "the app's",
        "filter_subject": "s.a",
    }
    await ok(
        client,
        "$JS.API.CONSUMER.CREATE.S.only",
        {"stream_name": "S", "config": app, "action": "create"},
    )
    path = tmp_path / "w.toml"
    path.write_text(
        f'[nats]\nservers = ["{server.url}"]\n[streams.S]\nsubjects = ["s.>"]\n'
        '[consumers.S.only]\nack_policy = "explicit"\nfilter_subject = "s.a"\n',
        encoding="utf-8",
    )
    plan = await run_cli("plan", "--json", config=path)
    assert plan.code == 0, plan.stdout
    (consumer,) = [r for r in plan.json()["resources"] if r["kind"] == "consumer"]
    assert consumer["action"] == "in_sync"


async def test_drift_is_reverted_in_place_keeping_the_position(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """An edited field is updated back; the consumer's ack floor stays where it was."""
    path = declaration(server, tmp_path)
    assert (await run_cli("apply", config=path)).code == 0
    for i in range(10):
        await client.publish("s.a", str(i).encode())
    await client.flush()
    sub = await client.jetstream().pull_subscribe_bind("pull", stream="S")
    msgs = await sub.fetch(6, timeout=5)
    for m in msgs:
        await m.ack_sync()
    before = await info(client, "pull")
    drifted = dict(before["config"])
    drifted["ack_wait"] = 60 * S
    await ok(
        client,
        "$JS.API.CONSUMER.CREATE.S.pull",
        {"stream_name": "S", "config": drifted, "action": "update"},
    )
    plan = await run_cli("plan", config=path)
    assert plan.code == 2
    assert "ack_wait" in plan.stdout
    fixed = await run_cli("apply", config=path)
    assert fixed.code == 0
    assert "consumer S/pull: updated" in fixed.stdout
    after = await info(client, "pull")
    assert after["config"]["ack_wait"] == 5 * S
    assert after["ack_floor"] == before["ack_floor"]
    assert after["ack_floor"]["stream_seq"] == 6
    assert after["created"] == before["created"]  # the same consumer, not a new one


async def test_an_immutable_difference_is_blocked(
    server: NatsServer, client: Client, tmp_path: Path, audit: ApiAudit
) -> None:
    """A declared ack policy the consumer cannot change to is blocked, exit 1, nothing written."""
    await ok(client, "$JS.API.STREAM.CREATE.S", {"name": "S", "subjects": ["s.>"]})
    await ok(
        client,
        "$JS.API.CONSUMER.CREATE.S.c",
        {
            "stream_name": "S",
            "config": {"durable_name": "c", "ack_policy": "all"},
            "action": "create",
        },
    )
    path = tmp_path / "w.toml"
    path.write_text(
        f'[nats]\nservers = ["{server.url}"]\nname = "kanade-watchdog"\n'
        '[streams.S]\nsubjects = ["s.>"]\n[consumers.S.c]\nack_policy = "explicit"\n',
        encoding="utf-8",
    )
    run = await run_cli("apply", "--json", config=path)
    assert run.code == 1
    (consumer,) = [r for r in run.json()["resources"] if r["kind"] == "consumer"]
    assert consumer["result"] == "blocked"
    assert "ack policy can not be updated" in consumer["reason"]
    await audit.settle()
    assert audit.count("CONSUMER.CREATE") == 0
    assert (await info(client, "c"))["config"]["ack_policy"] == "all"
