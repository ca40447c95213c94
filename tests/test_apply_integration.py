"""`apply` and `plan` against a real nats-server: what ends up on the broker.

Each test starts its own broker (fixtures `server`, `client` from conftest),
runs the real command line in a subprocess (helpers_streams.run_cli) and
reads the result back with raw JetStream API requests and nats-py's KV and
object-store clients. The broker's API audit, filtered by the watchdog's
connection name, proves which requests were (not) sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig

from tests.audit import ApiAudit
from tests.conftest import config_for
from tests.helpers_streams import (
    ALL_STREAMS,
    EXPECTED_KV,
    EXPECTED_OBJ,
    EXPECTED_STREAMS,
    GIB,
    MIB,
    NS_PER_DAY,
    TWO_MINUTES_NS,
    new_audit,
    raw_create,
    raw_update,
    requests_for,
    run_cli,
    stream_info,
    stream_names,
    watchdog_audit,
    write_config,
)
from tests.natsserver import NatsServer


@pytest.fixture
async def audit(client: Client) -> AsyncIterator[ApiAudit]:
    """Every watchdog API call during the test; fails it on any delete/purge."""
    async with watchdog_audit(client) as seen:
        yield seen


@pytest.fixture
def repo_config(server: NatsServer, tmp_path: Path) -> Path:
    return config_for(server.url, tmp_path)


async def _apply_ok(config: Path) -> None:
    run = await run_cli("apply", config=config)
    assert run.code == 0, run.stdout + run.stderr


# --- 1. a fresh broker ----------------------------------------------------------------


async def test_apply_on_fresh_broker_creates_all_25_with_declared_values(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """apply on an empty broker creates exactly the 25 declared streams, each with
    the declared limits and, for buckets, the ADR-8 / ADR-20 shape."""
    run = await run_cli("apply", "--json", config=repo_config)
    assert run.code == 0, run.stdout + run.stderr
    assert {r["result"] for r in run.json()["resources"]} == {"created"}
    assert await stream_names(client) == ALL_STREAMS

    for name, (subjects, max_age, max_bytes, discard, per_subject) in EXPECTED_STREAMS.items():
        cfg = (await stream_info(client, name))["config"]
        assert cfg["subjects"] == subjects, name
        assert cfg["max_age"] == max_age, name
        assert cfg["max_bytes"] == max_bytes, name
        assert cfg["discard"] == discard, name
        assert cfg["max_msgs_per_subject"] == per_subject, name
        assert (cfg["storage"], cfg["retention"], cfg["num_replicas"]) == ("file", "limits", 1)

    for bucket, history in EXPECTED_KV.items():
        cfg = (await stream_info(client, f"KV_{bucket}"))["config"]
        assert cfg["subjects"] == [f"$KV.{bucket}.>"], bucket
        assert cfg["max_msgs_per_subject"] == history, bucket
        assert cfg["discard"] == "new", bucket
        assert cfg["allow_rollup_hdrs"] is True, bucket
        assert cfg["deny_delete"] is True, bucket
        assert cfg["allow_direct"] is True, bucket
        assert (cfg["max_age"], cfg["max_bytes"], cfg["storage"]) == (0, -1, "file"), bucket
        assert cfg["duplicate_window"] == TWO_MINUTES_NS, bucket

    for bucket, (max_bytes, max_age) in EXPECTED_OBJ.items():
        cfg = (await stream_info(client, f"OBJ_{bucket}"))["config"]
        assert sorted(cfg["subjects"]) == sorted([f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"])
        assert cfg["max_bytes"] == max_bytes, bucket
        assert cfg["max_age"] == max_age, bucket
        assert cfg["discard"] == "new", bucket
        assert cfg["allow_rollup_hdrs"] is True, bucket
        assert cfg["allow_direct"] is True, bucket

    await audit.settle()
    assert audit.count("STREAM.CREATE") == 25
    assert audit.count("STREAM.UPDATE") == 0


# --- 2. nothing to do -------------------------------------------------------------------


async def test_second_apply_sends_zero_writes_and_one_list_request(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """A second apply on a converged broker sends no write at all: one
    STREAM.LIST request covers the 25 resources, and nothing else is asked."""
    await _apply_ok(repo_config)
    await audit.settle()
    assert audit.writes == 25  # the audit does see the first apply's writes

    second = await new_audit(client)
    run = await run_cli("apply", "--json", config=repo_config)
    await second.settle()
    await second.stop()
    assert run.code == 0
    doc = run.json()
    assert doc["in_sync"] is True
    assert {r["result"] for r in doc["resources"]} == {"in_sync"}
    assert second.writes == 0, second.verbs
    assert dict(second.verbs) == {"STREAM.LIST": 1}
    assert doc["requests"] == {"total": 1, "list": 1}


async def test_plan_on_in_sync_broker_exits_0_without_writes(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """plan on a converged broker exits 0, reports 25/25 in sync and writes nothing."""
    await _apply_ok(repo_config)
    phase = await new_audit(client)
    run = await run_cli("plan", "--json", config=repo_config)
    await phase.settle()
    await phase.stop()
    assert run.code == 0, run.stdout
    assert run.json()["summary"] == "25/25 in sync"
    assert phase.writes == 0, phase.verbs
    assert dict(phase.verbs) == {"STREAM.LIST": 1}


async def test_more_than_one_page_of_streams_is_read_with_one_list_per_page(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """With 300 unrelated streams on the broker (two pages of 256) every
    declared resource is still seen: apply creates 25, then an in-sync apply
    asks for two LIST pages and writes nothing."""
    await asyncio.gather(
        *(
            raw_create(
                client, {"name": f"OTHER{i}", "subjects": [f"other{i}.>"], "storage": "memory"}
            )
            for i in range(300)
        )
    )
    first = await run_cli("apply", "--json", config=repo_config)
    assert first.code == 0, first.stdout
    assert first.json()["requests"] == {"total": 27, "create": 25, "list": 2}

    phase = await new_audit(client)
    second = await run_cli("apply", "--json", config=repo_config)
    await phase.settle()
    assert second.code == 0
    assert phase.writes == 0
    assert phase.count("STREAM.LIST") == 2


# --- 3./4./5. drift fixed in place, data kept ----------------------------------------------


async def test_drift_on_stream_kv_and_object_store_is_fixed_in_place_keeping_data(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """Drift on RESULTS (max_age 30d -> 1d), KV script_current (history 5 -> 2)
    and object store result_output (max_bytes 1GiB -> 512MiB) is reverted by
    updates in place: messages, KV values and objects are all still there, and
    fields the config does not declare (description, metadata) are kept."""
    await _apply_ok(repo_config)
    js = client.jetstream()
    for i in range(10):
        await js.publish(f"results.pc{i}", b"exit 0" * 20)
    kv = await js.key_value("script_current")
    for i in range(5):
        await kv.put("cmd-1", f"v{i}".encode())
    obj = await js.object_store("result_output")
    await obj.put("job-1.out", b"o" * 300_000)
    before = (await stream_info(client, "RESULTS"))["state"]
    assert before["messages"] == 10

    await raw_update(
        client, "RESULTS", max_age=1 * NS_PER_DAY, description="ops", metadata={"owner": "ops"}
    )
    await raw_update(client, "KV_script_current", max_msgs_per_subject=2)
    await raw_update(client, "OBJ_result_output", max_bytes=512 * MIB)

    phase = await new_audit(client)
    run = await run_cli("apply", "--json", config=repo_config)
    await phase.settle()
    assert run.code == 0, run.stdout
    results = {s: r["result"] for s, r in run.resources().items() if r["result"] != "in_sync"}
    assert results == {
        "RESULTS": "updated",
        "KV_script_current": "updated",
        "OBJ_result_output": "updated",
    }
    assert phase.count("STREAM.UPDATE") == 3
    assert phase.count("STREAM.CREATE") == 0

    info = await stream_info(client, "RESULTS")
    assert info["config"]["max_age"] == 30 * NS_PER_DAY
    assert info["state"]["messages"] == before["messages"]
    assert info["state"]["first_seq"] == before["first_seq"]
    assert info["config"]["description"] == "ops"  # undeclared fields are kept
    assert info["config"]["metadata"]["owner"] == "ops"
    assert (await stream_info(client, "KV_script_current"))["config"]["max_msgs_per_subject"] == 5
    entry = await kv.get("cmd-1")
    assert entry.value == b"v4"
    assert (await stream_info(client, "OBJ_result_output"))["config"]["max_bytes"] == 1 * GIB
    assert (await obj.get("job-1.out")).data == b"o" * 300_000


async def test_cap_is_added_to_an_uncapped_object_store_keeping_its_objects(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """An object store created uncapped by nats-py gets the declared max_bytes
    1GiB and ttl 30d by an update, and its object stays readable."""
    js = client.jetstream()
    obj = await js.create_object_store("result_output")
    await obj.put("big.log", b"L" * 200_000)

    plan = await run_cli("plan", "--json", config=repo_config)
    assert plan.code == 2
    changes = {c["field"] for c in plan.resources()["OBJ_result_output"]["changes"]}
    assert changes == {"max_bytes", "ttl"}

    run = await run_cli("apply", "--json", config=repo_config)
    assert run.code == 0, run.stdout
    assert run.resources()["OBJ_result_output"]["result"] == "updated"
    cfg = (await stream_info(client, "OBJ_result_output"))["config"]
    assert (cfg["max_bytes"], cfg["max_age"]) == (1 * GIB, 30 * NS_PER_DAY)
    assert (await obj.get("big.log")).data == b"L" * 200_000


async def test_kv_bucket_created_by_nats_py_is_in_sync(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """A KV bucket nats-py created (allow_direct false, allow_msg_ttl true) with
    the declared history is in sync: no update is planned or sent for it."""
    js = client.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket="jobs", history=5))
    await kv.put("nightly", b"manifest")

    plan = await run_cli("plan", "--json", config=repo_config)
    assert plan.resources()["KV_jobs"]["action"] == "in_sync"
    assert plan.resources()["KV_jobs"]["changes"] == []

    run = await run_cli("apply", "--json", config=repo_config)
    await audit.settle()
    assert run.code == 0
    assert run.resources()["KV_jobs"]["result"] == "in_sync"
    assert requests_for(audit, "KV_jobs") == []
    assert (await kv.get("nightly")).value == b"manifest"


async def test_drifted_kv_bucket_from_nats_py_is_updated_keeping_its_own_fields(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """A nats-py bucket with history 2 instead of 5 is updated in place to 5;
    the fields nats-py chose (allow_direct false, allow_msg_ttl true, which the
    broker refuses to turn off) are sent back unchanged and its value is kept."""
    js = client.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket="jobs", history=2))
    await kv.put("nightly", b"manifest")

    run = await run_cli("apply", "--json", config=repo_config)
    await audit.settle()
    assert run.code == 0, run.stdout
    jobs = run.resources()["KV_jobs"]
    assert jobs["result"] == "updated"
    assert [c["field"] for c in jobs["changes"]] == ["history"]
    assert requests_for(audit, "KV_jobs") == ["$JS.API.STREAM.UPDATE.KV_jobs"]
    cfg = (await stream_info(client, "KV_jobs"))["config"]
    assert cfg["max_msgs_per_subject"] == 5
    assert (cfg["allow_direct"], cfg["allow_msg_ttl"]) == (False, True)
    assert (await kv.get("nightly")).value == b"manifest"


async def test_kv_bucket_in_the_other_clients_shape_is_in_sync(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """A KV bucket in the shape the official JS client makes (allow_direct true,
    deny_delete false) is in sync too: fields another client chose are not drift."""
    await raw_create(
        client,
        {
            "name": "KV_schedules",
            "subjects": ["$KV.schedules.>"],
            "max_msgs_per_subject": 5,
            "discard": "new",
            "allow_rollup_hdrs": True,
            "allow_direct": True,
            "deny_delete": False,
        },
    )
    run = await run_cli("apply", "--json", config=repo_config)
    await audit.settle()
    assert run.code == 0
    assert run.resources()["KV_schedules"]["result"] == "in_sync"
    assert requests_for(audit, "KV_schedules") == []


# --- 6. blocked: the broker cannot, or must not, make the change -----------------------


def _inventory_declares_file_storage(config: Path) -> Path:
    """The repo config declares file storage for INVENTORY (asserted, not added)."""
    text = config.read_text()
    start = text.index("[streams.INVENTORY]")
    assert 'storage = "file"' in text[start : text.index("[streams.RESULTS]")]
    return config


async def test_immutable_storage_difference_is_blocked_and_data_untouched(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """INVENTORY held in memory while the config declares file storage is
    blocked (storage cannot change in place): no write for it, its messages
    and storage stay as they are, the other 24 resources are created, exit 1."""
    config = _inventory_declares_file_storage(repo_config)
    await raw_create(
        client, {"name": "INVENTORY", "subjects": ["inventory.>"], "storage": "memory"}
    )
    js = client.jetstream()
    for i in range(7):
        await js.publish(f"inventory.pc{i}", b"{}")

    run = await run_cli("apply", "--json", config=config)
    await audit.settle()
    assert run.code == 1
    inventory = run.resources()["INVENTORY"]
    assert inventory["result"] == "blocked"
    assert "storage" in inventory["reason"]
    assert {c["field"] for c in inventory["changes"]} >= {"storage"}
    others = {s: r["result"] for s, r in run.resources().items() if s != "INVENTORY"}
    assert set(others.values()) == {"created"}
    assert len(others) == 24
    assert [s for s in requests_for(audit, "INVENTORY") if ".INFO." not in s] == []
    info = await stream_info(client, "INVENTORY")
    assert info["state"]["messages"] == 7
    assert info["config"]["storage"] == "memory"
    assert info["config"]["max_bytes"] == -1  # not even the mutable fields were sent


async def test_undeclared_storage_is_not_compared(
    server: NatsServer, client: Client, tmp_path: Path, audit: ApiAudit
) -> None:
    """Only declared fields are compared: with no storage key a memory copy is
    in sync and untouched (the repo config declares storage to guard it)."""
    config = write_config(
        tmp_path,
        server.url,
        '[streams.INVENTORY]\nsubjects = ["inventory.>"]\nmax_bytes = "1MiB"\n',
    )
    await raw_create(
        client,
        {
            "name": "INVENTORY",
            "subjects": ["inventory.>"],
            "storage": "memory",
            "max_bytes": 1 * MIB,
        },
    )
    run = await run_cli("apply", "--json", config=config)
    assert run.resources()["INVENTORY"]["result"] == "in_sync"
    assert run.code == 0
    await audit.settle()
    assert audit.writes == 0
    assert (await stream_info(client, "INVENTORY"))["config"]["storage"] == "memory"


async def test_stream_holding_a_kv_name_with_other_subjects_is_blocked(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """A plain stream named KV_jobs that is not a KV bucket is blocked with a
    reason that says so; it is neither updated nor deleted."""
    await raw_create(client, {"name": "KV_jobs", "subjects": ["jobs.>"]})
    run = await run_cli("apply", "--json", config=repo_config)
    await audit.settle()
    assert run.code == 1
    jobs = run.resources()["KV_jobs"]
    assert jobs["result"] == "blocked"
    assert "not a KV bucket" in jobs["reason"]
    assert requests_for(audit, "KV_jobs") == []
    assert (await stream_info(client, "KV_jobs"))["config"]["subjects"] == ["jobs.>"]


async def test_subject_overlap_with_undeclared_stream_fails_one_and_others_converge(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """An undeclared stream on results.x makes RESULTS fail (10065) with an
    explanation; the other 24 are created and the foreign stream is untouched."""
    await raw_create(client, {"name": "ROGUE", "subjects": ["results.x"]})
    run = await run_cli("apply", "--json", config=repo_config)
    await audit.settle()
    assert run.code == 1
    results = run.resources()["RESULTS"]
    assert results["result"] == "failed"
    assert results["error"].startswith("RESULTS: ")
    assert "overlap" in results["error"]
    assert sum(r["result"] == "created" for r in run.resources().values()) == 24
    assert requests_for(audit, "ROGUE") == []
    assert "RESULTS" not in await stream_names(client)


async def test_protected_stream_refuses_an_update_that_discards_data(
    server: NatsServer, client: Client, tmp_path: Path, audit: ApiAudit
) -> None:
    """protect = true blocks an update whose new cap would discard stored
    messages (all kept); the same change on an unprotected stream is applied
    with the loss spelt out in at_stake."""
    config = write_config(
        tmp_path,
        server.url,
        (
            '[streams.P]\nsubjects = ["p.>"]\nmax_bytes = "1KiB"\nprotect = true\n\n'
            '[streams.U]\nsubjects = ["u.>"]\nmax_bytes = "1KiB"\n'
        ),
    )
    await raw_create(client, {"name": "P", "subjects": ["p.>"]})
    await raw_create(client, {"name": "U", "subjects": ["u.>"]})
    js = client.jetstream()
    for _ in range(20):
        await js.publish("p.x", b"z" * 200)
        await js.publish("u.x", b"z" * 200)

    run = await run_cli("apply", "--json", config=config)
    await audit.settle()
    assert run.code == 1
    protected, unprotected = run.resources()["P"], run.resources()["U"]
    assert protected["result"] == "blocked"
    assert protected["at_stake"]
    assert "protect" in protected["reason"]
    assert unprotected["result"] == "updated"
    assert unprotected["at_stake"]
    assert requests_for(audit, "P") == []
    p_info = await stream_info(client, "P")
    assert p_info["state"]["messages"] == 20
    assert p_info["config"]["max_bytes"] == -1


# --- 7. out of storage on one resource ---------------------------------------------------


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A broker whose file store reserves at most 300MB."""
    srv = NatsServer(tmp_path, jetstream_conf="max_file_store: 300MB", name="small").start()
    yield srv
    srv.stop()


async def test_insufficient_storage_fails_only_the_stream_that_does_not_fit(
    small_server: NatsServer, tmp_path: Path
) -> None:
    """On a 300MB file store, three 64MiB streams are created and the 1GiB one
    fails (10047) with a line naming it, its cap and the declared total; exit 1.
    A second apply retries only that one."""
    config = write_config(
        tmp_path,
        small_server.url,
        "".join(
            f'[streams.{name}]\nsubjects = ["{name.lower()}.>"]\nmax_bytes = "{cap}"\n\n'
            for name, cap in (
                ("SMALL1", "64MiB"),
                ("SMALL2", "64MiB"),
                ("SMALL3", "64MiB"),
                ("BIG", "1GiB"),
            )
        ),
    )
    nc = await nats.connect(small_server.url)
    try:
        async with watchdog_audit(nc) as audit:
            run = await run_cli("apply", config=config)
            assert run.code == 1
            lines = {line.split(":")[0]: line for line in run.stdout.splitlines()}
            for name in ("SMALL1", "SMALL2", "SMALL3"):
                assert lines[f"stream {name}"] == f"stream {name}: created"
            big = lines["stream BIG"]
            assert "failed" in big
            assert "max_bytes 1GiB" in big
            assert "declared file total 1.2GiB" in big
            assert "max_file_store" in big

            names = await stream_names(nc)
            assert names == {"SMALL1", "SMALL2", "SMALL3"}
            for name in ("SMALL1", "SMALL2", "SMALL3"):
                assert (await stream_info(nc, name))["config"]["max_bytes"] == 64 * MIB

            phase = await new_audit(nc)
            again = await run_cli("apply", "--json", config=config)
            await phase.settle()
            assert again.code == 1
            results = {s: r["result"] for s, r in again.resources().items()}
            assert results == {
                "SMALL1": "in_sync",
                "SMALL2": "in_sync",
                "SMALL3": "in_sync",
                "BIG": "failed",
            }
            assert "BIG" in again.resources()["BIG"]["error"]
            assert [s for s in phase.subjects if ".CREATE." in s] == ["$JS.API.STREAM.CREATE.BIG"]
            assert phase.count("STREAM.UPDATE") == 0
            await audit.settle()
    finally:
        await nc.close()


# --- 8. what was created works with the clients ------------------------------------------


async def test_created_kv_buckets_work_through_nats_py(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """KV buckets created by apply open with nats-py's KV API; put/get work and
    history keeps exactly the declared number of revisions (5, or 1)."""
    await _apply_ok(repo_config)
    js = client.jetstream()
    kv = await js.key_value("script_current")
    await kv.put("cmd-42", b"version-1")
    assert (await kv.get("cmd-42")).value == b"version-1"
    for i in range(2, 7):
        await kv.put("cmd-42", f"version-{i}".encode())
    history = await kv.history("cmd-42")
    assert [e.value for e in history] == [f"version-{i}".encode() for i in range(2, 7)]

    latest_only = await js.key_value("agents_state")
    await latest_only.put("pc-1", b"old")
    await latest_only.put("pc-1", b"new")
    assert [e.value for e in await latest_only.history("pc-1")] == [b"new"]


async def test_created_object_store_works_through_nats_py(
    client: Client, repo_config: Path, audit: ApiAudit
) -> None:
    """An object store created by apply opens with nats-py's object-store API:
    a multi-chunk object put is read back byte for byte."""
    await _apply_ok(repo_config)
    js = client.jetstream()
    store = await js.object_store("scripts")
    body = bytes(range(256)) * 2000  # 512000 bytes: several chunks
    info = await store.put("install.ps1", body)
    assert info.size == len(body)
    assert (await store.get("install.ps1")).data == body
    names = [o.name for o in await store.list()]
    assert names == ["install.ps1"]
