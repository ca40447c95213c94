"""The broker refusing one resource while the others must keep converging:
10047 insufficient storage, an immutable difference, a denied permission,
subjects that overlap another stream's. A refusal is reported once and
retried slowly, or at once when what caused it changes; it never blocks
the rest, and it never turns into a delete-and-recreate."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.chaos import figures
from tests.chaos.harness import CHAOS_WATCHDOG, Scene, scene_for
from tests.chaos.invariants import Invariants
from tests.chaos.ledger import api_ok
from tests.chaos.scale import pick, timeout
from tests.conftest import StartServer
from tests.daemonproc import DaemonProc, Line, has_message, is_action
from tests.natsserver import NatsServer
from tests.proxy import StallProxy

DELETES = pick(6, 40)  # out-of-band deletes of the healthy ones while one is refused

SMALL = """
[streams.ORDERS]
subjects = ["orders.>"]
storage = "file"
max_bytes = "8MiB"

[streams.BIG]
# 1 GiB cannot be reserved on a 200 MB file store: 10047, permanent.
subjects = ["big.>"]
storage = "file"
max_bytes = "1GiB"

[streams.PLAIN]
subjects = ["plain.>"]

[kv_buckets.settings]
history = 5
max_bytes = "8MiB"

[object_stores.blobs]
max_bytes = "16MiB"
"""


async def delete_healthy(
    scene: Scene, daemon: DaemonProc, rng: random.Random, refused: str, n: int
) -> float:
    """Delete `n` random healthy resources one after the other, each once it
    is back; returns the worst time to converge again."""
    worst = 0.0
    healthy = [r.stream for r in scene.resources if r.stream != refused]
    for _ in range(n):
        mark = daemon.mark()
        await api_ok(scene.nc, f"$JS.API.STREAM.DELETE.{rng.choice(healthy)}")
        scene.figure.faults += 1
        took = await scene.converge(
            daemon, t0=time.monotonic(), after=mark, reconnect=False, skip=[refused]
        )
        scene.figure.converged(took)
        worst = max(worst, took)
    return worst


PERMANENT_RETRY = 1.0  # CHAOS_WATCHDOG permanent_retry (the daemon adds up to 10 % jitter)
assert CHAOS_WATCHDOG["permanent_retry"] == "1s"


def tried_big(line: Line) -> bool:
    """A failed create of BIG, as logged: the first one at warning level, the
    same failure again at debug level."""
    text = str(line.get("message", ""))
    return (line.get("stream") == "BIG" and line.get("action") == "failed") or (
        text.startswith("BIG failing: ")
    )


def retry_delay(line: Line) -> float:
    """The pause before the next try that a failure line announces."""
    found = re.findall(r"retry in ([0-9.]+)s[;)]", str(line["message"]))
    assert found, line
    return float(found[-1])  # the daemon's own words come after the broker's


@pytest.mark.timeout(timeout(60, 300))
async def test_insufficient_storage_on_one_stream_while_the_others_converge(
    scene: Scene,
) -> None:
    """On a 200 MB file store a 1 GiB stream fails with 10047, logged once as
    permanent with what to change, every try followed by a pause of
    permanent_retry (each accounted for on the broker); every other
    resource is created and healed meanwhile, and once the store is enlarged
    the refused stream is created too."""
    figure, rng = scene.figure, random.Random(5)
    scene.server.jetstream_conf = "max_file_store: 200MB"
    scene.server.restart()
    daemon = scene.start(scene.config(resources=SMALL))
    inv = Invariants(scene, daemon)
    started = time.monotonic()
    await scene.converge(daemon, t0=started, after=0, reconnect=False, skip=["BIG"])
    figure.faults += 1
    await delete_healthy(scene, daemon, rng, "BIG", DELETES)
    await inv.quiet_when_in_sync(skip=["BIG"])
    failed = daemon.find(is_action("failed", stream="BIG"))
    assert len(failed) == 1, daemon.tail()
    assert "max_file_store" in failed[0]["message"]
    assert "permanent" in failed[0]["message"]
    # The slow pace, from the daemon's own decisions: every failed create of
    # BIG scheduled its retry after permanent_retry, and the broker saw no
    # create of BIG beyond those (the one in flight at most).
    told = daemon.find(tried_big)
    attempts = len((await scene.ledger.collect()).writes(stream="BIG"))
    assert len(told) <= attempts <= daemon.count(tried_big) + 1, (attempts, told)
    delays = [retry_delay(line) for line in told]
    assert all(PERMANENT_RETRY <= d <= PERMANENT_RETRY * 1.1 + 0.01 for d in delays), delays
    # The operator raises the limit: the next slow retry creates it.
    mark = daemon.mark()
    scene.server.jetstream_conf = "max_file_store: 2GB"
    scene.server.restart()
    took = await scene.converge(daemon, t0=time.monotonic(), after=mark, reconnect=True)
    await daemon.wait_for(is_action("created", stream="BIG"), after=mark, within=5)
    figure.converged(took)
    figure.heals = daemon.count(is_action("created")) - len(scene.resources) + 1
    await inv.quiet_when_in_sync()
    await inv.no_destructive()
    await inv.stops_cleanly()
    figure.hostile(
        "a 1 GiB stream declared on a 200 MB file store (10047)",
        "failed once as permanent with what to change, retried only after permanent_retry; the "
        "others healed; created once the store is enlarged",
    )
    figures.publish(figure)


@pytest.mark.timeout(timeout(60, 300))
async def test_immutable_difference_is_reported_never_forced(scene: Scene) -> None:
    """RESULTS held in memory storage (declared file, which the broker cannot
    change in place) is reported blocked once and never written, deleted or
    re-created, across resyncs and while the other resources are deleted and
    healed around it."""
    figure, rng = scene.figure, random.Random(6)
    await api_ok(
        scene.nc,
        "$JS.API.STREAM.CREATE.RESULTS",
        {"name": "RESULTS", "subjects": ["results.>"], "storage": "memory"},
    )
    for i in range(20):  # data that a forced re-create would destroy
        await scene.nc.publish("results.pc1", f"row {i}".encode())
    daemon = scene.start(scene.config())
    inv = Invariants(scene, daemon)
    await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False, skip=["RESULTS"])
    figure.faults += 1
    await delete_healthy(scene, daemon, rng, "RESULTS", DELETES)
    await inv.quiet_when_in_sync(passes=2, skip=["RESULTS"])
    blocked = daemon.find(is_action("blocked", stream="RESULTS"))
    assert len(blocked) == 1, daemon.tail()
    assert "storage cannot change from memory to file" in blocked[0]["message"]
    await scene.ledger.collect()
    assert not [c for c in scene.ledger.calls if c.stream == "RESULTS" and c.write]
    info = await api_ok(scene.nc, "$JS.API.STREAM.INFO.RESULTS")
    assert info["config"]["storage"] == "memory"
    assert info["state"]["messages"] == 20
    figure.heals = daemon.count(is_action("created")) - (len(scene.resources) - 1)
    figure.survived += 1  # the refusal itself: reported, never forced, the daemon up
    await inv.no_destructive()
    await inv.stops_cleanly()
    figure.hostile(
        "RESULTS held in memory storage by another client, declared file, 20 messages in it",
        "blocked once; never written, deleted or re-created; its 20 messages intact",
    )
    figures.publish(figure)


ADMIN_PASSWORD = "chaos-admin-pw"
WATCHDOG_PASSWORD = "chaos-watchdog-pw"
DENIED = "$JS.API.STREAM.UPDATE.RESULTS"
AUTH_CONF = f"""
authorization {{
  users = [
    {{user: admin, password: {ADMIN_PASSWORD}}}
    {{user: watchdog, password: {WATCHDOG_PASSWORD}, permissions: {{
        publish: {{allow: ["$JS.API.>"], deny: ["{DENIED}"]}}
        subscribe: {{allow: ["_INBOX.>", "$JS.EVENT.ADVISORY.>"]}}
    }}}}
  ]
}}
"""


@pytest.fixture
async def auth_scene(
    tmp_path: Path, start_server: StartServer, request: pytest.FixtureRequest
) -> AsyncIterator[Scene]:
    """A broker where the watchdog user may do everything but update RESULTS."""
    server = start_server(NatsServer(tmp_path / "auth", extra_conf=AUTH_CONF))
    options = {"user": "admin", "password": ADMIN_PASSWORD}
    async with scene_for(tmp_path, server, request.node.name, admin_options=options) as world:
        yield world


async def drift_results(scene: Scene) -> None:
    config = dict((await api_ok(scene.nc, "$JS.API.STREAM.INFO.RESULTS"))["config"])
    config["max_age"] = 86_400 * 10**9  # 1d instead of the declared 30d
    await api_ok(scene.nc, "$JS.API.STREAM.UPDATE.RESULTS", config)


def auth_config(scene: Scene) -> Path:
    return scene.config(nats={"user": "watchdog", "password": WATCHDOG_PASSWORD})


@pytest.mark.timeout(timeout(60, 300))
async def test_permission_denied_on_one_update_while_the_others_heal(auth_scene: Scene) -> None:
    """With $JS.API.STREAM.UPDATE.RESULTS denied to the watchdog user, a
    drifted RESULTS stays drifted (nothing forced, nothing deleted) and is
    reported once as a permanent failure naming that subject, while every
    other resource deleted out of band is healed, and the daemon stays
    connected and up."""
    scene, rng = auth_scene, random.Random(7)
    figure = scene.figure
    daemon = scene.start(auth_config(scene))
    inv = Invariants(scene, daemon)
    await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
    before = (await scene.ledger.collect()).mark()
    await drift_results(scene)
    figure.faults += 1
    await delete_healthy(scene, daemon, rng, "RESULTS", DELETES)
    await inv.quiet_when_in_sync(skip=["RESULTS"])
    assert await scene.out_of_sync() == ["RESULTS"]
    assert not daemon.find(is_action("broker_lost")), daemon.tail()
    await scene.ledger.collect()
    # Denied before it reaches JetStream: the audit shows no update of RESULTS at all.
    assert not scene.ledger.writes(after=before, stream="RESULTS")
    # Reported once, as permanent, naming the denied subject, across the retries.
    await daemon.wait_for(has_message("RESULTS failing"), within=10, n=2)
    failed = daemon.find(is_action("failed", stream="RESULTS"))
    assert len(failed) == 1, daemon.tail()
    assert DENIED in failed[0]["message"], failed
    assert "permanent" in failed[0]["message"], failed
    figure.heals = daemon.count(is_action("created")) - len(scene.resources)
    figure.survived += 1  # the refusal itself: reported, never forced, the daemon up
    await inv.no_destructive()
    await inv.stops_cleanly()
    figure.hostile(
        "the watchdog user denied `$JS.API.STREAM.UPDATE.RESULTS`, RESULTS drifted",
        "failed once as permanent naming the subject; nothing forced; the others healed, the "
        "connection kept",
    )
    figures.publish(figure)


OVERLAP_ROUNDS = pick(3, 20)
OVERLAPPING = """
[streams.INVENTORY]
subjects = ["inventory.>"]

[streams.NOTIFICATIONS]
subjects = ["notifications.>"]

[streams.PLAIN]
subjects = ["plain.>"]
"""


@pytest.mark.timeout(timeout(60, 300))
async def test_overlap_with_a_declared_stream_heals_once_that_stream_is_reverted(
    scene: Scene,
) -> None:
    """INVENTORY deleted and NOTIFICATIONS widened over `inventory.>` by another
    client, with the daemon's requests held for a moment so that it meets
    both at once: the re-create of INVENTORY is refused (10065, permanent),
    the daemon reverts NOTIFICATIONS and then creates INVENTORY, without
    waiting for permanent_retry (1h); the refusal names
    NOTIFICATIONS as declared, never 'a stream this config does not declare'."""
    figure = scene.figure
    proxy = await StallProxy(scene.server.port).start()
    try:
        config = scene.config(
            url=proxy.url, resources=OVERLAPPING, watchdog={"permanent_retry": "1h"}
        )
        daemon = scene.start(config)
        inv = Invariants(scene, daemon)
        await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
        await inv.quiet_when_in_sync()
        for _ in range(OVERLAP_ROUNDS):
            mark = daemon.mark()
            proxy.stall(upstream=True)
            await api_ok(scene.nc, "$JS.API.STREAM.DELETE.INVENTORY")
            info = await api_ok(scene.nc, "$JS.API.STREAM.INFO.NOTIFICATIONS")
            widened = {**info["config"], "subjects": ["notifications.>", "inventory.>"]}
            await api_ok(scene.nc, "$JS.API.STREAM.UPDATE.NOTIFICATIONS", widened)
            figure.faults += 1
            await asyncio.sleep(0.05)
            proxy.resume()
            took = await scene.converge(
                daemon, t0=time.monotonic(), after=mark, reconnect=False, within=10
            )
            figure.converged(took)
            figure.heals += daemon.count(is_action("created"), after=mark)
            figure.heals += daemon.count(is_action("updated"), after=mark)
            # In that order: the revert of NOTIFICATIONS is what let INVENTORY
            # be created, an hour before its permanent retry was due.
            [reverted] = await daemon.wait_for(
                is_action("updated", stream="NOTIFICATIONS"), after=mark
            )
            [created] = await daemon.wait_for(is_action("created", stream="INVENTORY"), after=mark)
            assert daemon.lines.index(reverted) < daemon.lines.index(created)
        refused = daemon.find(is_action("failed", stream="INVENTORY"))
        assert refused, "the overlap never happened: the scenario proved nothing"
        for line in refused:
            assert "which this config declares" in line["message"], line
            assert "does not declare" not in line["message"], line
        await inv.quiet_when_in_sync()
        await inv.no_destructive()
        await inv.stops_cleanly()
    finally:
        await proxy.close()
    figure.hostile(
        "INVENTORY deleted and NOTIFICATIONS widened over `inventory.>` by another client",
        "the refused re-create names NOTIFICATIONS as declared; NOTIFICATIONS reverted, then "
        "INVENTORY created, without waiting for permanent_retry (1 h)",
    )
    figures.publish(figure)
