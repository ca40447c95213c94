"""Data at stake is judged from the config the whole update leaves in force:
retention, discard, every limit, history and ttl, each against what the stream
holds. The pure cases pin the decision; the broker cases replay the reported
reproductions (issue 10, items 1 and 2) against a real nats-server through the
command line, and prove that a protected stream keeps every message."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from kanade_watchdog.core.plan import Action, Decision, Observed, Stake, decide
from kanade_watchdog.model.resources import Kind, Resource
from tests.helpers_streams import (
    new_audit,
    raw_create,
    raw_update,
    requests_for,
    run_cli,
    stream_info,
    write_config,
)
from tests.natsserver import NatsServer

SEC = 1_000_000_000
HOUR = 3600 * SEC
DAY = 24 * HOUR
KIB = 1024
MIB = 1024**2
NOW = datetime(2025, 6, 1, 12, 0, 0)

BROKER_STREAM: dict[str, Any] = {
    "name": "S1",
    "subjects": ["s1.>"],
    "retention": "limits",
    "max_consumers": -1,
    "max_msgs": -1,
    "max_bytes": -1,
    "max_age": 0,
    "max_msgs_per_subject": -1,
    "max_msg_size": -1,
    "discard": "old",
    "storage": "file",
    "num_replicas": 1,
    "duplicate_window": 120 * SEC,
    "compression": "none",
    "allow_direct": False,
    "mirror_direct": False,
    "sealed": False,
    "deny_delete": False,
    "deny_purge": False,
    "allow_rollup_hdrs": False,
    "consumer_limits": {},
    "allow_msg_ttl": False,
    "metadata": {"_nats.req.level": "0"},
}


def held(**fields: Any) -> dict[str, Any]:
    config = copy.deepcopy(BROKER_STREAM)
    config.update(fields)
    return config


def state(messages: int, size: int, *, subjects: int = 0, consumers: int = 0) -> dict[str, Any]:
    return {
        "messages": messages,
        "bytes": size,
        "first_seq": 1,
        "first_ts": (NOW - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z",
        "last_seq": messages,
        "last_ts": NOW.strftime("%Y-%m-%dT%H:%M:%S.000000001Z"),
        "num_subjects": subjects,
        "consumer_count": consumers,
    }


def stream(*, protect: bool = False, **declared: Any) -> Resource:
    return Resource(Kind.STREAM, "S1", {"subjects": ("s1.>",), **declared}, protect=protect)


def judged(resource: Resource, config: dict[str, Any], st: dict[str, Any]) -> Decision:
    return decide(resource, Observed(config=config, state=st), NOW)


def lost(decision: Decision) -> list[Stake]:
    return [s for s in decision.stakes if s.loses_data]


# --- retention ---------------------------------------------------------------------------


def test_retention_to_interest_without_consumers_loses_everything() -> None:
    """limits -> interest on a stream without consumers deletes every message at once
    (measured): it is data at stake, and protect refuses it."""
    free = judged(stream(retention="interest"), held(), state(1000, 100 * KIB))
    assert free.action is Action.UPDATE
    assert [s.loses_data for s in free.stakes] == [True]
    assert "all 1000 stored messages" in free.at_stake[0]

    guarded = judged(stream(retention="interest", protect=True), held(), state(1000, 100 * KIB))
    assert guarded.action is Action.BLOCKED
    assert guarded.send is None
    assert "protect = true" in guarded.reason


def test_retention_to_interest_with_consumers_is_still_at_stake() -> None:
    """With consumers, what they have all acknowledged goes: the planner cannot see
    acknowledgements, so the change stays at stake (protect refuses it)."""
    decision = judged(
        stream(retention="interest", protect=True), held(), state(10, 1000, consumers=2)
    )
    assert decision.action is Action.BLOCKED
    assert "2 consumers" in decision.at_stake[0]


def test_retention_to_interest_on_an_empty_stream_is_harmless() -> None:
    """Nothing stored, nothing at stake: the change is applied even when protected."""
    decision = judged(stream(retention="interest", protect=True), held(), state(0, 0))
    assert decision.action is Action.UPDATE
    assert decision.stakes == ()


def test_retention_back_to_limits_is_harmless() -> None:
    """interest -> limits keeps everything."""
    decision = judged(
        stream(retention="limits", protect=True), held(retention="interest"), state(50, 5000)
    )
    assert decision.action is Action.UPDATE
    assert decision.stakes == ()


# --- discard ------------------------------------------------------------------------------


def test_discard_new_to_old_over_the_cap_discards_data() -> None:
    """A stream held over its cap by discard new loses the excess the moment discard
    becomes old, although no cap changed."""
    config = held(discard="new", max_bytes=256 * KIB)
    free = judged(stream(discard="old"), config, state(120, 964_080))
    assert free.action is Action.UPDATE
    assert [s.loses_data for s in free.stakes] == [True]
    assert "would be discarded" in free.at_stake[0]

    guarded = judged(stream(discard="old", protect=True), config, state(120, 964_080))
    assert guarded.action is Action.BLOCKED


def test_discard_new_to_old_over_max_msgs_discards_data() -> None:
    """The same holds for a message count over max_msgs."""
    decision = judged(
        stream(discard="old", protect=True),
        held(discard="new", max_msgs=10),
        state(100, 10_000),
    )
    assert decision.action is Action.BLOCKED
    assert "90 of 100 messages" in decision.at_stake[0]


def test_discard_new_to_old_under_the_cap_is_harmless() -> None:
    """Switching discard with usage under every cap loses nothing."""
    decision = judged(
        stream(discard="old", protect=True),
        held(discard="new", max_bytes=MIB, max_msgs=1000),
        state(100, 10_000),
    )
    assert decision.action is Action.UPDATE
    assert decision.stakes == ()


@pytest.mark.parametrize(
    ("field", "value", "used"),
    [("max_bytes", 256 * KIB, "stored is over"), ("max_msgs", 10, "messages are over")],
)
def test_discard_new_cap_below_usage_refuses_writes_but_loses_nothing(
    field: str, value: int, used: str
) -> None:
    """A discard-new cap lowered below usage keeps every message and refuses new
    writes: shown as such, not as discarded data, and allowed under protect."""
    decision = judged(
        stream(protect=True, **{field: value}),
        held(discard="new"),
        state(120, 964_080),
    )
    assert decision.action is Action.UPDATE
    assert len(decision.stakes) == 1
    stake = decision.stakes[0]
    assert not stake.loses_data
    assert used in stake.text
    assert "new writes would be refused" in stake.text
    assert "discarded" not in stake.text


def test_cap_lowered_while_switching_to_discard_new_loses_nothing() -> None:
    """Lowering a cap in the same update that makes discard new keeps the data."""
    decision = judged(
        stream(protect=True, max_bytes=256 * KIB, discard="new"), held(), state(120, 964_080)
    )
    assert decision.action is Action.UPDATE
    assert [s.loses_data for s in decision.stakes] == [False]


# --- per-subject limits, history, ttl -------------------------------------------------------


def test_per_subject_limit_trims_even_with_discard_new() -> None:
    """max_msgs_per_subject trims every subject at once whatever the discard policy."""
    decision = judged(
        stream(max_msgs_per_subject=3, protect=True),
        held(discard="new"),
        state(100, 10_000, subjects=2),
    )
    assert decision.action is Action.BLOCKED
    assert "beyond 3 per subject" in decision.at_stake[0]


def test_per_subject_limit_with_one_message_per_subject_is_harmless() -> None:
    """When every subject holds a single message, a limit of 1 drops nothing."""
    decision = judged(
        stream(max_msgs_per_subject=1, protect=True), held(), state(40, 4000, subjects=40)
    )
    assert decision.action is Action.UPDATE
    assert decision.stakes == ()


def test_kv_history_words_keys() -> None:
    """KV history is worded per key."""
    config = held(
        name="KV_jobs",
        subjects=["$KV.jobs.>"],
        discard="new",
        max_msgs_per_subject=5,
        allow_rollup_hdrs=True,
    )
    decision = judged(Resource(Kind.KV, "jobs", {"history": 2}), config, state(42, 4096))
    assert "beyond 2 per key" in decision.at_stake[0]
    assert lost(decision)


def test_stake_text_is_the_string_form() -> None:
    """A Stake prints as its text, so callers that print at_stake lines keep working."""
    decision = judged(stream(max_msgs=10), held(), state(100, 10_000))
    assert [str(s) for s in decision.stakes] == list(decision.at_stake)
    assert decision.loses_data


# --- the reported reproductions, on a real broker ---------------------------------------------


async def _publish(client: Client, subject: str, count: int, size: int = 100) -> None:
    js = client.jetstream()
    for _ in range(count):
        await js.publish(subject, b"x" * size)


async def test_retention_change_on_a_protected_stream_keeps_every_message(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """Issue 10 item 1: a protected ORDERS with 1,000 messages, re-declared with
    retention interest and spec_version 2, is refused by plan and apply; all 1,000
    messages stay and no update is sent."""
    body = '[streams.ORDERS]\nsubjects = ["orders.>"]\nprotect = true\n'
    config = write_config(tmp_path, server.url, body)
    assert (await run_cli("apply", config=config)).code == 0
    await _publish(client, "orders.new", 1000)

    config.write_text("spec_version = 2\n" + config.read_text() + 'retention = "interest"\n')
    plan = await run_cli("plan", "--json", config=config)
    orders = plan.resources()["ORDERS"]
    assert orders["action"] == "blocked", plan.stdout
    assert any("1000" in text for text in orders["at_stake"])

    audit = await new_audit(client)
    run = await run_cli("apply", "--json", config=config)
    await audit.settle()
    await audit.stop()
    assert run.code == 1
    assert run.resources()["ORDERS"]["result"] == "blocked"
    assert requests_for(audit, "ORDERS") == []
    info = await stream_info(client, "ORDERS")
    assert info["state"]["messages"] == 1000
    assert info["config"]["retention"] == "limits"


async def test_discard_switch_on_a_protected_stream_keeps_data_past_the_cap(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """Issue 10 item 2: max_bytes 1MiB, discard new, ~960 KB stored. Lowering the cap
    to 256KiB loses nothing and is applied, shown as refused writes; switching
    discard to old would drop most messages and is refused under protect."""
    await raw_create(client, {"name": "SPOOL", "subjects": ["spool.>"]})
    body = (
        '[streams.SPOOL]\nsubjects = ["spool.>"]\nmax_bytes = "1MiB"\n'
        'discard = "new"\nprotect = true\n'
    )
    config = write_config(tmp_path, server.url, body)
    assert (await run_cli("apply", config=config)).code == 0
    await _publish(client, "spool.x", 120, size=8000)
    stored = (await stream_info(client, "SPOOL"))["state"]["messages"]
    assert stored == 120

    config.write_text(config.read_text().replace('"1MiB"', '"256KiB"'))
    run = await run_cli("apply", "--json", config=config)
    assert run.code == 0, run.stdout
    spool = run.resources()["SPOOL"]
    assert spool["result"] == "updated"
    assert any("new writes would be refused" in text for text in spool["at_stake"])
    assert not any("discarded" in text for text in spool["at_stake"])
    assert (await stream_info(client, "SPOOL"))["state"]["messages"] == 120

    config.write_text(config.read_text().replace('discard = "new"', 'discard = "old"'))
    run = await run_cli("apply", "--json", config=config)
    spool = run.resources()["SPOOL"]
    assert spool["result"] == "blocked", run.stdout
    assert any("would be discarded" in text for text in spool["at_stake"])
    info = await stream_info(client, "SPOOL")
    assert info["state"]["messages"] == 120
    assert info["config"]["discard"] == "new"


async def test_unprotected_discard_switch_is_shown_at_stake_and_loses_what_it_said(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """Without protect the same switch is applied; the loss it announced is what the
    broker then does (the messages over the cap are gone)."""
    await raw_create(
        client,
        {"name": "SPOOL", "subjects": ["spool.>"], "max_bytes": MIB, "discard": "new"},
    )
    await _publish(client, "spool.x", 120, size=8000)
    await raw_update(client, "SPOOL", max_bytes=256 * KIB)
    body = '[streams.SPOOL]\nsubjects = ["spool.>"]\ndiscard = "old"\n'
    config = write_config(tmp_path, server.url, body)
    run = await run_cli("apply", "--json", config=config)
    assert run.code == 0, run.stdout
    spool = run.resources()["SPOOL"]
    assert spool["result"] == "updated"
    assert any("would be discarded" in text for text in spool["at_stake"])
    assert (await stream_info(client, "SPOOL"))["state"]["messages"] < 120


def test_a_decision_built_with_texts_only_keeps_them() -> None:
    """Callers that build a Decision with at_stake texts (as before stakes existed)
    read them back unchanged."""
    decision = Decision(stream(), Action.UPDATE, at_stake=("1 of 2 messages",))
    assert decision.at_stake == ("1 of 2 messages",)
    assert decision.stakes == ()
