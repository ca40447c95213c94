"""`kanade-watchdog export` against a real broker: the round trip is the contract.

A broker populated by nats-py (streams, KV buckets, object stores) and by raw
JetStream API requests (another client's bucket shape, streams with newer
fields, a mirror, a sourcing and a sealed stream) is
exported; the file must then validate, plan in sync (exit 0) and apply with
zero writes, counted on the broker's own API audit. Also: `--merge` keeps a
file byte for byte, no secret reaches an export, output is written
atomically, and random valid declarations survive apply -> export -> plan.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import secrets
import stat
import tempfile
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import tomlkit
from hypothesis import HealthCheck, given, settings
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, ObjectStoreConfig, Placement, StorageType, StreamSource

from kanade_watchdog import cli
from kanade_watchdog.config.load import load, parse
from tests.conftest import config_for
from tests.declarations import declarations, is_default
from tests.helpers_streams import (
    WATCHDOG_NAME,
    raw_create,
    raw_update,
    run_cli,
    watchdog_audit,
    write_config,
)
from tests.natsserver import NatsServer, free_port

MIB = 1024**2
SEC = 10**9


@pytest.fixture
def tagged_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A broker with server tags, so a stream can declare a placement."""
    srv = NatsServer(tmp_path, extra_conf='server_tags: ["ssd", "az:1"]').start()
    yield srv
    srv.stop()


@pytest.fixture
async def tagged_client(tagged_server: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(tagged_server.url)
    yield nc
    await nc.close()


async def populate(nc: Client) -> None:
    """A wide spread of fields, from the official client and from raw requests."""
    js = nc.jetstream()
    await js.add_stream(
        name="ORDERS",
        subjects=["orders.>", "returns.*"],
        retention="interest",
        max_msgs=100_000,
        max_bytes=256 * MIB,
        max_age=90 * 86400,
        max_msgs_per_subject=10,
        max_msg_size=MIB,
        discard="new",
        duplicate_window=30,
        description='orders "live"\nsecond line, ünïcode',
        compression="s2",
        allow_direct=True,
        deny_delete=True,
        allow_rollup_hdrs=True,  # the broker refuses it together with deny_purge
        metadata={"owner": "ops", "tier": "gold"},
        placement=Placement(tags=["ssd"]),
    )
    await js.add_stream(
        name="CACHE", subjects=["cache.>"], storage="memory", max_age=1.5, max_bytes=10_000
    )
    await js.add_stream(name="WORK", subjects=["work.*"], retention="workqueue", deny_purge=True)
    await js.add_stream(name="TTL", subjects=["ttl.>"], allow_msg_ttl=True, max_msgs=50)
    await js.add_stream(name="ORDERS_COPY", mirror=StreamSource(name="ORDERS"))
    await js.add_stream(name="ALL_ORDERS", sources=[StreamSource(name="ORDERS")])
    await raw_create(
        nc,
        {
            "name": "RAW",
            "subjects": ["raw.>"],
            "max_consumers": 5,
            "republish": {"src": "raw.>", "dest": "copy.raw.>"},
            "metadata": {"kanade.managed_by": "someone-else", "team": "data"},
        },
    )
    await raw_create(nc, {"name": "FROZEN", "subjects": ["frozen.>"]})
    await raw_update(nc, "FROZEN", sealed=True)
    # A stream that has a bucket's name and subjects but not its rollup headers.
    await raw_create(nc, {"name": "KV_fake", "subjects": ["$KV.fake.>"]})

    await js.create_key_value(
        KeyValueConfig(
            bucket="jobs",
            history=5,
            ttl=3600,
            max_bytes=MIB,
            max_value_size=4096,
            description="job specs",
        )
    )
    await js.create_key_value(KeyValueConfig(bucket="cache", storage=StorageType.MEMORY, ttl=30))
    await js.create_key_value(KeyValueConfig(bucket="plain"))
    # The official JS client's KV shape, with compression, by raw request.
    await raw_create(
        nc,
        {
            "name": "KV_sessions",
            "subjects": ["$KV.sessions.>"],
            "max_msgs_per_subject": 3,
            "discard": "new",
            "allow_rollup_hdrs": True,
            "allow_direct": True,
            "compression": "s2",
            "max_age": 0,
            "duplicate_window": 120 * SEC,
        },
    )
    await js.create_object_store(
        "blobs", config=ObjectStoreConfig(ttl=86400, max_bytes=1024**3, description="build output")
    )
    await js.create_object_store("bare")
    await js.publish("work.a", b'{"id": 1}')
    await js.publish("work.b", b"back")
    kv = await js.key_value("jobs")
    await kv.put("a", b"1")
    await kv.put("a", b"2")
    store = await js.object_store("blobs")
    await store.put("artifact.bin", b"x" * 200_000)


async def stamp_with_spec_version(url: str, tmp_path: Path) -> None:
    """One stream written by a watchdog whose config had spec_version 2."""
    config = tmp_path / "stamped.toml"
    config.write_text(
        f'spec_version = 2\n[nats]\nservers = ["{url}"]\n'
        '[streams.STAMPED]\nsubjects = ["stamped.>"]\n'
    )
    run = await run_cli("apply", config=config)
    assert run.code == 0, run.stdout + run.stderr


async def test_export_of_a_populated_broker_validates_plans_in_sync_and_applies_nothing(
    tagged_server: NatsServer, tagged_client: Client, tmp_path: Path
) -> None:
    """The round trip: export, validate (0), plan (0, all in sync), apply with zero
    writes; a mirror and a sourcing stream are exported, a sealed one is skipped
    with the reason, no server or marker metadata."""
    await populate(tagged_client)
    await stamp_with_spec_version(tagged_server.url, tmp_path)
    out = tmp_path / "adopted.toml"
    run = await run_cli(
        "export", "--server", tagged_server.url, "-o", str(out), config=tmp_path / "absent.toml"
    )
    assert run.code == 0, run.stderr
    assert run.stdout == ""
    assert "no config file at" in run.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    text = out.read_text()
    lines = text.splitlines()
    for line in (
        "# stream FROZEN: not exported: sealed (it can no longer be changed, so it is not managed)",
        "spec_version = 2",
    ):
        assert line in lines, line
    assert "_nats" not in text
    assert "kanade." not in text
    assert "# stream WORK holds 2 messages" in text
    assert "# stream KV_jobs holds 2 messages" in text

    document = tomllib.loads(text)
    assert document["nats"] == {"servers": [tagged_server.url], "name": "kanade-watchdog"}
    assert document["streams"]["ORDERS"] == {
        "subjects": ["orders.>", "returns.*"],
        "retention": "interest",
        "max_age": "90d",
        "max_bytes": "256MiB",
        "max_msgs": 100_000,
        "max_msgs_per_subject": 10,
        "max_msg_size": "1MiB",
        "discard": "new",
        "duplicate_window": "30s",
        "description": 'orders "live"\nsecond line, ünïcode',
        "compression": "s2",
        "placement": {"tags": ["ssd"]},
        "allow_direct": True,
        "deny_delete": True,
        "allow_rollup_hdrs": True,
        "metadata": {"owner": "ops", "tier": "gold"},
    }
    assert document["streams"]["CACHE"] == {
        "subjects": ["cache.>"],
        "storage": "memory",
        "max_age": "1500ms",
        "max_bytes": "10kB",
    }
    assert document["streams"]["WORK"] == {
        "subjects": ["work.*"],
        "retention": "workqueue",
        "deny_purge": True,
    }
    assert document["streams"]["RAW"] == {
        "subjects": ["raw.>"],
        "metadata": {"team": "data"},
        "republish": {"src": "raw.>", "dest": "copy.raw.>"},
        "max_consumers": 5,
    }
    assert document["streams"]["TTL"] == {
        "subjects": ["ttl.>"],
        "max_msgs": 50,
        "allow_msg_ttl": True,
    }
    # ORDERS serves direct gets, so the server gave its mirror mirror_direct.
    assert document["streams"]["ORDERS_COPY"] == {
        "mirror": {"name": "ORDERS"},
        "mirror_direct": True,
    }
    assert document["streams"]["ALL_ORDERS"] == {"sources": [{"name": "ORDERS"}]}
    assert "left out" not in text
    assert document["streams"]["KV_fake"] == {"subjects": ["$KV.fake.>"]}
    assert document["kv_buckets"] == {
        "jobs": {
            "history": 5,
            "ttl": "1h",
            "max_bytes": "1MiB",
            "max_value_size": "4KiB",
            "description": "job specs",
        },
        "cache": {"ttl": "30s", "storage": "memory"},
        "plain": {},
        "sessions": {"history": 3, "compression": "s2"},
    }
    assert document["object_stores"] == {
        "blobs": {"ttl": "1d", "max_bytes": "1GiB", "description": "build output"},
        "bare": {},
    }
    assert set(document["streams"]) == {
        "ORDERS",
        "CACHE",
        "WORK",
        "TTL",
        "RAW",
        "KV_fake",
        "STAMPED",
        "ORDERS_COPY",
        "ALL_ORDERS",
    }

    validate = await run_cli("validate", config=out)
    assert validate.code == 0, validate.stderr
    assert "OK (15 resources)" in validate.stdout
    plan = await run_cli("plan", "--json", config=out)
    assert plan.code == 0, plan.stdout + plan.stderr
    assert {r["action"] for r in plan.json()["resources"]} == {"in_sync"}
    assert len(plan.json()["resources"]) == 15
    async with watchdog_audit(tagged_client) as audit:
        applied = await run_cli("apply", config=out)
    assert applied.code == 0, applied.stdout + applied.stderr
    assert audit.writes == 0, audit.verbs
    assert audit.count("STREAM.LIST") == 1, audit.verbs

    # The filters, as typed on the command line.
    some = await run_cli(
        "export",
        "--kind",
        "kv",
        "--kind",
        "object",
        "--match",
        "j*",
        "--match",
        "OBJ_b*",
        config=out,
    )
    assert some.code == 0, some.stderr
    assert set(tomllib.loads(some.stdout)) == {"nats", "kv_buckets", "object_stores"}
    assert set(tomllib.loads(some.stdout)["kv_buckets"]) == {"jobs"}
    assert set(tomllib.loads(some.stdout)["object_stores"]) == {"blobs", "bare"}
    assert "not exported" not in some.stdout  # the skipped ones are streams


async def test_merge_keeps_the_file_byte_for_byte_and_adds_the_rest(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """`export --merge F -o F` on the repo's commented config.toml: every original
    byte stays, in order, as a prefix; only undeclared resources are appended; the
    result validates and plans in sync."""
    config = config_for(server.url, tmp_path)
    converge = await run_cli("apply", config=config)
    assert converge.code == 0, converge.stdout
    js = client.jetstream()
    await js.add_stream(name="EXTRA", subjects=["extra.>"], max_age=7 * 86400)
    await js.create_key_value(KeyValueConfig(bucket="extra_kv", history=3))
    os.chmod(config, 0o640)
    original = config.read_bytes()

    printed = await run_cli("export", "--merge", str(config), config=config)
    assert printed.code == 0, printed.stderr
    assert config.read_bytes() == original  # without -o the file is not touched
    assert printed.stdout.encode().startswith(original)

    written = await run_cli("export", "--merge", str(config), "-o", str(config), config=config)
    assert written.code == 0, written.stderr
    merged = config.read_bytes()
    assert merged.startswith(original)
    assert merged[len(original) :].startswith(b"\n# Added by kanade-watchdog export at ")
    assert stat.S_IMODE(config.stat().st_mode) == 0o640  # a replaced file keeps its mode
    added = tomllib.loads(merged[len(original) :].decode())
    assert added == {
        "streams": {"EXTRA": {"subjects": ["extra.>"], "max_age": "1w"}},
        "kv_buckets": {"extra_kv": {"history": 3}},
    }
    assert (await run_cli("validate", config=config)).code == 0
    plan = await run_cli("plan", config=config)
    assert plan.code == 0, plan.stdout
    again = await run_cli("export", "--merge", str(config), "-o", str(config), config=config)
    assert again.code == 0, again.stderr
    assert config.read_bytes() == merged  # nothing left to add: unchanged
    assert "unchanged" in again.stderr


async def test_output_never_replaces_a_file_it_was_not_asked_to_merge(
    server: NatsServer, tmp_path: Path
) -> None:
    """-o onto an existing file (the live config here) is refused with one line,
    exit 1, the file untouched; a missing directory is refused before connecting."""
    config = config_for(server.url, tmp_path)
    before = config.read_bytes()
    run = await run_cli("export", "-o", str(config), config=config)
    assert run.code == 1
    assert run.stderr.strip().splitlines() == [
        f"export: {config}: already exists; not replaced (add to it with --merge {config} "
        f"-o {config}, or remove it first)"
    ]
    assert config.read_bytes() == before
    nowhere = tmp_path / "no" / "such" / "dir.toml"
    run = await run_cli("export", "-o", str(nowhere), config=config)
    assert run.code == 1
    assert "no such directory" in run.stderr
    assert leftover_temporary_files(tmp_path) == []


def leftover_temporary_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


async def test_bad_merge_source_and_unreachable_broker_are_one_line_each(
    tmp_path: Path,
) -> None:
    """A merge source that is not TOML exits 78 naming it; a broker that does not
    answer exits 1 with one line."""
    port = free_port()
    config = write_config(tmp_path, f"nats://127.0.0.1:{port}", "")
    broken = tmp_path / "broken.toml"
    broken.write_text("[streams.A\n")
    run = await run_cli("export", "--merge", str(broken), config=config)
    assert run.code == 78
    assert run.stderr.startswith(f"config error: {broken}: TOML syntax:")
    run = await run_cli("export", config=config)
    assert run.code == 1
    assert run.stderr.strip().startswith("broker error: cannot connect to")
    assert len(run.stderr.strip().splitlines()) == 1


# --- no secret in an export --------------------------------------------------------------


@pytest.fixture
def token() -> str:
    return f"tok-{secrets.token_hex(16)}"


@pytest.fixture
def token_server(tmp_path: Path, token: str) -> Iterator[NatsServer]:
    srv = NatsServer(tmp_path, extra_conf=f'authorization {{ token: "{token}" }}\n').start()
    yield srv
    srv.stop()


async def test_no_secret_appears_in_an_export(
    token_server: NatsServer, token: str, tmp_path: Path
) -> None:
    """With an inline token, a token file or $KANADE_NATS_TOKEN, the export (and its
    messages) never carries the token; a file is named as token_file."""
    nc = await nats.connect(token_server.url, token=token)
    await nc.jetstream().add_stream(name="S", subjects=["s.>"], description=token[:6])
    await nc.close()
    inline = write_config(tmp_path, token_server.url, f'token = "{token}"\n', "inline.toml")
    inline.chmod(0o600)
    token_file = tmp_path / "nats-token"
    token_file.write_text(token + "\n")
    from_file = write_config(tmp_path, token_server.url, f'token_file = "{token_file}"\n', "f.toml")

    runs = [
        await run_cli("export", config=inline),
        await run_cli("export", config=from_file),
        await run_cli("export", "--merge", str(from_file), config=from_file),
    ]
    for run in runs:
        assert run.code == 0, run.stderr
        assert token not in run.stdout + run.stderr
        assert "[streams.S]" in run.stdout
    assert "token" not in tomllib.loads(runs[0].stdout)["nats"]
    assert "a token was used" in runs[0].stdout
    assert tomllib.loads(runs[1].stdout)["nats"]["token_file"] == str(token_file)

    # Merging keeps a file's text, so a file with an inline token is never printed,
    # and its merged copy is as private as the file.
    printed = await run_cli("export", "--merge", str(inline), config=inline)
    assert printed.code == 1
    assert "holds an inline token or password" in printed.stderr
    assert token not in printed.stdout + printed.stderr
    copy = tmp_path / "merged.toml"
    written = await run_cli("export", "--merge", str(inline), "-o", str(copy), config=inline)
    assert written.code == 0, written.stderr
    assert token not in written.stdout + written.stderr
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    wrong = write_config(tmp_path, token_server.url, f'token = "{token}x"\n', "wrong.toml")
    wrong.chmod(0o600)
    refused = await run_cli("export", config=wrong)
    assert refused.code == 1
    assert token not in refused.stdout + refused.stderr


# --- the property: random declarations survive apply -> export -> plan -----------------


def run_main(*argv: str) -> tuple[int, str, str]:
    """cli.main in-process, its output captured and its logging set-up undone."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(argv))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return code, out.getvalue(), err.getvalue()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(declarations(single_server=True, max_each=2))
def test_random_declarations_applied_export_and_plan_to_zero(
    document: dict[str, dict[str, dict[str, Any]]],
) -> None:
    """Any valid declaration, applied to a fresh broker, exports to a file that plans
    in sync and declares exactly the original's non-default values."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        srv = NatsServer(workdir).start()
        try:
            source = workdir / "in.toml"
            source.write_text(
                tomlkit.dumps({"nats": {"servers": [srv.url], "name": WATCHDOG_NAME}, **document})
            )
            code, out, err = run_main("apply", "--config", str(source))
            assert code == 0, out + err
            exported = workdir / "out.toml"
            code, out, err = run_main("export", "-o", str(exported), "--config", str(source))
            assert code == 0, err
            code, out, err = run_main("plan", "--config", str(exported))
            assert code == 0, out + err
            after = {r.stream: r.declared for r in load(str(exported)).resources}
        finally:
            srv.stop()
    before = {r.stream: r.declared for r in parse(document, "in.toml").resources}
    assert set(after) == set(before)
    for stream, declared in after.items():
        for key, value in declared.items():
            assert before[stream].get(key) == value, (stream, key)
        for key in set(before[stream]) - set(declared):
            assert is_default(key, before[stream]), (stream, key, before[stream][key])
