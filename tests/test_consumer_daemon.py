"""The daemon heals declared consumers: a deleted consumer through its
advisory and, with advisories off, through the resync; a deleted stream
comes back with its consumers in the same pass; and a lost consumer comes
back where it left off (the position proof, with real clients)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from tests.audit import ApiAudit
from tests.daemonproc import WATCHDOG_NAME, DaemonProc, daemon_config, eventually, has_message
from tests.jsapi import connect, ok, request
from tests.natsserver import NatsServer, free_port
from tests.test_http_daemon import P, get, samples, until_status

RESOURCES = """
[streams.S]
subjects = ["s.>"]

[consumers.S.worker]
ack_policy = "explicit"
ack_wait = "30s"

[consumers.S.push]
deliver_subject = "deliver.push"
ack_policy = "explicit"
filter_subjects = ["s.a", "s.b"]
"""

Spawn = Callable[[Path], DaemonProc]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    procs: list[DaemonProc] = []

    def start(config: Path) -> DaemonProc:
        proc = DaemonProc(config).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.close()


@pytest.fixture
async def audit(client: Client) -> AsyncIterator[ApiAudit]:
    seen = await ApiAudit(client, client_name=WATCHDOG_NAME).start()
    yield seen
    await seen.settle(0.05)
    await seen.stop()
    assert seen.destructive == 0, seen.verbs


async def consumer_info(nc: Client, durable: str) -> dict[str, Any] | None:
    """The consumer's info; None while it is missing (or the broker restarts)."""
    try:
        answer = await request(nc, f"$JS.API.CONSUMER.INFO.S.{durable}", wait=0.5)
    except (NatsTimeout, NoRespondersError):
        return None
    return None if "error" in answer else answer


async def back(nc: Client, *durables: str, within: float = 10.0) -> None:
    async def all_there() -> bool:
        return all([await consumer_info(nc, d) is not None for d in durables])

    await eventually(all_there, within=within, what=f"consumers {durables} present")


def config(tmp_path: Path, server: NatsServer, **watchdog: str | bool) -> Path:
    return daemon_config(tmp_path / "w.toml", server.url, resources=RESOURCES, watchdog=watchdog)


async def test_a_deleted_consumer_is_healed_through_its_advisory(
    server: NatsServer, client: Client, tmp_path: Path, spawn: Spawn, audit: ApiAudit
) -> None:
    """The resync is an hour away: only the CONSUMER.DELETED advisory can bring it back."""
    spawn(config(tmp_path, server))
    await back(client, "worker", "push")
    await ok(client, "$JS.API.CONSUMER.DELETE.S.worker")
    await back(client, "worker")
    info = await consumer_info(client, "worker")
    assert info is not None
    assert info["config"]["ack_wait"] == 30 * 1_000_000_000


async def test_with_advisories_off_the_resync_heals_it(
    server: NatsServer, client: Client, tmp_path: Path, spawn: Spawn
) -> None:
    """No advisory subscription: the next full pass finds the consumer missing."""
    spawn(config(tmp_path, server, advisories=False, resync_interval="300ms"))
    await back(client, "worker", "push")
    await ok(client, "$JS.API.CONSUMER.DELETE.S.push")
    await back(client, "push")


async def test_a_deleted_stream_comes_back_with_its_consumers(
    server: NatsServer, client: Client, tmp_path: Path, spawn: Spawn
) -> None:
    """The stream's delete advisory brings the stream back, and its consumers in the same pass."""
    proc = spawn(config(tmp_path, server))
    await back(client, "worker", "push")
    created_before = (await consumer_info(client, "worker") or {})["created"]
    await ok(client, "$JS.API.STREAM.DELETE.S")
    await back(client, "worker", "push")
    info = await consumer_info(client, "worker")
    assert info is not None
    assert info["created"] != created_before
    # a stream re-created empty has no position to keep: the declared policy applies
    assert info["config"]["deliver_policy"] == "all"
    assert proc.alive


async def test_a_lost_consumer_resumes_after_its_ack_floor(
    server: NatsServer, client: Client, tmp_path: Path, spawn: Spawn, audit: ApiAudit
) -> None:
    """The position proof: 100 published, 60 acked, observed, the consumer
    deleted; after the heal the next fetch starts at 61 or earlier, never at
    1, and every message from 61 to 100 is delivered."""
    proc = spawn(config(tmp_path, server, resync_interval="300ms"))
    await back(client, "worker")
    js = client.jetstream()
    for i in range(1, 101):  # acknowledged: all 100 are stored before the fetch
        await js.publish("s.x", str(i).encode())
    sub = await js.pull_subscribe_bind("worker", stream="S")
    got = await sub.fetch(60, timeout=5)
    assert [m.metadata.sequence.stream for m in got] == list(range(1, 61))
    for m in got:
        await m.ack_sync()
    # wait past one observation: two consumer lists after the last ack
    lists = audit.count("CONSUMER.LIST")

    async def observed_twice() -> bool:
        return audit.count("CONSUMER.LIST") >= lists + 2

    await eventually(observed_twice, what="two observations after the acks")
    await ok(client, "$JS.API.CONSUMER.DELETE.S.worker")
    (line,) = await proc.wait_for(has_message("resumed at stream sequence 61"), within=10)
    assert line["level"] == "info"
    assert line["kind"] == "consumer"
    assert line["resource"] == "S/worker"
    assert line["action"] == "created"
    assert line["resumed_from"] == 61
    await back(client, "worker")
    info = await consumer_info(client, "worker")
    assert info is not None
    assert info["config"]["deliver_policy"] == "by_start_sequence"
    assert info["config"]["opt_start_seq"] == 61
    assert info["config"]["metadata"]["kanade.resumed_from"] == "61"
    sub = await js.pull_subscribe_bind("worker", stream="S")
    seqs: list[int] = []
    while True:
        try:
            batch = await sub.fetch(50, timeout=1)
        except (NatsTimeout, TimeoutError):  # nats-py raises either when nothing is left
            break
        for m in batch:
            seqs.append(m.metadata.sequence.stream)
            await m.ack()
    assert seqs, "nothing delivered after the heal"
    assert 1 < seqs[0] <= 61
    assert set(range(61, 101)) <= set(seqs)
    # resumed and in sync with its declared deliver policy: no write loop
    writes = audit.writes
    await audit.settle(1.0)
    assert audit.writes == writes


async def test_ready_waits_for_the_declared_consumers(
    server: NatsServer, client: Client, tmp_path: Path, spawn: Spawn
) -> None:
    """/readyz names a declared consumer that cannot exist yet (its stream is
    another tool's and missing), and turns 200 once it is healed."""
    port = free_port()
    resources = RESOURCES + '\n[consumers.OTHER.reader]\nack_policy = "explicit"\n'
    path = daemon_config(
        tmp_path / "w.toml",
        server.url,
        resources=resources,
        watchdog={"resync_interval": "300ms"},
        http=f"127.0.0.1:{port}",
    )
    spawn(path)
    await back(client, "worker", "push")

    async def names_the_consumer() -> bool:
        reply = await get(port, "/readyz")
        return reply.status == 503 and "consumer:OTHER/reader" in reply.body

    await eventually(names_the_consumer, what="/readyz naming the missing consumer")
    await ok(client, "$JS.API.STREAM.CREATE.OTHER", {"name": "OTHER", "subjects": ["other.>"]})
    await until_status(port, "/readyz", 200)
    assert "error" not in await request(client, "$JS.API.CONSUMER.INFO.OTHER.reader")


async def test_a_memory_stream_lost_in_a_restart_comes_back_with_its_consumers(
    server: NatsServer, tmp_path: Path, spawn: Spawn
) -> None:
    """A broker restart loses a memory stream and its consumers; the reconnect's
    full pass creates the stream and, in the same pass, its consumers."""
    resources = RESOURCES.replace('subjects = ["s.>"]', 'subjects = ["s.>"]\nstorage = "memory"')
    path = daemon_config(tmp_path / "w.toml", server.url, resources=resources)
    proc = spawn(path)
    nc = await connect(server.url, "test-client")
    try:
        await back(nc, "worker", "push")
        server.restart()
        await back(nc, "worker", "push", within=15)
        info = await consumer_info(nc, "worker")
        assert info is not None
        assert info["config"]["ack_wait"] == 30 * 1_000_000_000
        assert proc.alive
    finally:
        await nc.close()


async def test_an_edit_is_found_by_the_resync_and_reverted_without_a_loop(
    server: NatsServer, client: Client, tmp_path: Path, spawn: Spawn, audit: ApiAudit
) -> None:
    """No advisory tells of a consumer update: the resync finds it, updates it
    in place (the same consumer), and its own update reads back in sync."""
    proc = spawn(config(tmp_path, server, resync_interval="300ms"))
    await back(client, "worker", "push")
    before = await consumer_info(client, "worker")
    assert before is not None
    edited = {**before["config"], "ack_wait": 90 * 1_000_000_000}
    await ok(
        client,
        "$JS.API.CONSUMER.CREATE.S.worker",
        {"stream_name": "S", "config": edited, "action": "update"},
    )
    (line,) = await proc.wait_for(has_message("consumer S/worker: updated"), within=10)
    assert line["diff"].startswith("ack_wait")
    after = await consumer_info(client, "worker")
    assert after is not None
    assert after["config"]["ack_wait"] == 30 * 1_000_000_000
    assert after["created"] == before["created"]
    await audit.settle()
    writes = audit.writes
    await audit.settle(1.0)  # three resyncs
    assert audit.writes == writes


async def test_a_consumer_heal_moves_the_consumer_metrics(
    server: NatsServer, client: Client, tmp_path: Path, spawn: Spawn
) -> None:
    """Over HTTP: the declared consumers are in resource_state, in sync after
    the startup pass created them; a delete healed through its advisory moves
    heals_total{kind=consumer,trigger=advisory} and the advisory latency
    count by one, and the consumer is in sync again."""
    port = free_port()
    path = daemon_config(
        tmp_path / "w.toml", server.url, resources=RESOURCES, http=f"127.0.0.1:{port}"
    )
    proc = spawn(path)
    await back(client, "worker", "push")
    await until_status(port, "/readyz", 200)
    heals = (f"{P}heals_total", (("kind", "consumer"), ("trigger", "advisory")))
    latency = (f"{P}heal_latency_seconds_count", (("trigger", "advisory"),))
    in_sync = (("kind", "consumer"), ("name", "S/worker"), ("state", "in_sync"))
    before = await samples(port)
    assert before[heals] == 0
    assert before[(f"{P}heals_total", (("kind", "consumer"), ("trigger", "startup")))] == 2
    assert before[(f"{P}resource_state", in_sync)] == 1

    mark = proc.mark()
    await ok(client, "$JS.API.CONSUMER.DELETE.S.worker")
    await proc.wait_for(has_message("consumer S/worker: created"), after=mark, within=10)
    after = await samples(port)
    assert after[heals] == 1
    assert after[latency] == before.get(latency, 0) + 1
    assert after[(f"{P}resource_state", in_sync)] == 1
