"""Out-of-band delete storms, and the daemon itself killed -9 mid-pass.

A storm deletes random declared resources as fast as one client can for a
while (a minute in the full run) with a producer publishing throughout:
every delete must be followed by exactly one re-create. A daemon killed in
the middle of a pass of creates or updates must leave nothing behind that
keeps the next process from converging. Deletes whose advisories never
arrive are healed by the second look after each create, and a writer that
undoes every update is fought a few times, then reported, never looped."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import defaultdict

import pytest

from kanade_watchdog.daemon.guard import WRITES_PER_WINDOW
from tests.chaos import figures
from tests.chaos.harness import (
    BULK,
    LEDGER,
    LEDGER_SUBJECT,
    Scene,
    bulk_streams,
    chaos_resources,
    is_pass,
)
from tests.chaos.invariants import Invariants
from tests.chaos.ledger import Producer, api, api_ok
from tests.chaos.scale import pick, timeout
from tests.daemonproc import DaemonProc, is_action
from tests.proxy import StallProxy

STORM_SECONDS = pick(5.0, 60.0)
STORM_PAUSE = 0.005
DAEMON_KILLS = pick(4, 24)  # alternating: creates/updates, delivered/lost
TS_PRECISION = 0.001  # the daemon's log stamps are rounded to the millisecond


@pytest.mark.timeout(timeout(60, 400))
async def test_delete_storm_every_delete_is_healed_once(scene: Scene) -> None:
    """Random declared resources deleted out of band at a high rate for a
    while, a producer publishing to LEDGER throughout: every successful
    delete is followed by exactly one re-create, no acknowledged message is
    lost, and once the storm ends nothing is written."""
    figure, rng = scene.figure, random.Random(8)
    daemon = scene.start(scene.config())
    inv = Invariants(scene, daemon)
    await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
    producer = await Producer(scene.server.url, LEDGER_SUBJECT).start()
    try:
        await producer.wait_acks(20)
        await inv.quiet_when_in_sync()
        inv.baseline()
        targets = [r.stream for r in scene.resources if r.stream != LEDGER]
        deletes: dict[str, list[float]] = defaultdict(list)
        mark, started = daemon.mark(), time.monotonic()
        while time.monotonic() - started < STORM_SECONDS:
            stream = rng.choice(targets)
            at = time.time()
            answer = await api(scene.nc, f"$JS.API.STREAM.DELETE.{stream}")
            if "error" not in answer:
                deletes[stream].append(at)
                figure.faults += 1
            if figure.faults % 50 == 0:
                inv.alive()
            await asyncio.sleep(STORM_PAUSE)
        took = await scene.converge(daemon, t0=time.monotonic(), after=mark, reconnect=False)
        assert figure.faults >= 20 * STORM_SECONDS, f"only {figure.faults} deletes"
        late = scene.timed_out(daemon, after=mark)
        for stream in targets:
            created = [
                float(line["ts"])
                for line in daemon.find(is_action("created", stream=stream), after=mark)
            ]
            done = deletes[stream]
            if stream in late:  # each late answer can hide one `created`
                assert len(created) <= len(done), (stream, done, created)
            else:
                assert len(created) == len(done), (stream, done, created)
            for deleted_at, created_at in zip(done, created, strict=False):
                # Each re-create follows its own delete, never an earlier one.
                assert created_at >= deleted_at - TS_PRECISION, (stream, done, created)
                figure.times.append(created_at - deleted_at)
            figure.heals += len(created)
        # Every delete healed: the final convergence found everything in place.
        figure.survived = figure.faults
        figure.worst_converge = max([took, *figure.times])
        await inv.quiet_when_in_sync()
        inv.memory_flat()
    finally:
        await producer.stop()
    lost = await producer.verify(scene.nc, LEDGER)
    figure.acked, figure.lost = len(producer.acked), len(lost)
    assert not lost, lost[:10]
    await inv.no_destructive()
    await inv.stops_cleanly()
    figure.hostile(
        "declared resources deleted as fast as one client can, a producer publishing",
        "exactly one re-create per delete, each after its own delete; no acknowledged message "
        "lost; nothing written once it ends",
    )
    figures.publish(figure)


async def drift_everything(scene: Scene) -> int:
    """Another client changes one declared field of every plain stream and KV
    bucket (object stores are left as they are)."""
    n = 0
    for res in scene.resources:
        if res.kind.value == "object_store":
            continue
        config = dict((await api_ok(scene.nc, f"$JS.API.STREAM.INFO.{res.stream}"))["config"])
        if res.kind.value == "kv":
            config["max_msgs_per_subject"] = 9
        else:
            config["max_age"] = 3_600 * 10**9
        await api_ok(scene.nc, f"$JS.API.STREAM.UPDATE.{res.stream}", config)
        n += 1
    return n


def is_startup_pass(line: dict[str, object]) -> bool:
    return str(line.get("message", "")).startswith("pass (startup)")


async def settled_out_of_sync(scene: Scene, *, within: float = 10.0) -> list[str]:
    """What is out of sync once the broker has finished the requests a killed
    daemon left in its socket: the same answer twice, 200 ms apart."""
    deadline = time.monotonic() + within
    previous: list[str] | None = None
    while True:
        await asyncio.sleep(0.2)
        now = await scene.out_of_sync()
        if now is not None and now == previous:
            return now
        assert time.monotonic() < deadline, "the broker never settled"
        previous = now


def driftable(scene: Scene) -> int:
    return sum(1 for r in scene.resources if r.kind.value != "object_store")


async def delete_everything(scene: Scene) -> int:
    answers = await asyncio.gather(
        *(api(scene.nc, f"$JS.API.STREAM.DELETE.{r.stream}") for r in scene.resources)
    )
    assert all("error" not in a for a in answers), answers
    return len(answers)


async def first_request_held(proxy: StallProxy, *, since: float, within: float = 10.0) -> float:
    """When the first bytes a client sent after `since` reached the stalled
    proxy (wall clock, as the daemon stamps its log lines)."""
    deadline = time.monotonic() + within
    while proxy.last_upstream <= since:
        assert time.monotonic() < deadline, "no request reached the stalled path"
        await asyncio.sleep(0.005)
    return proxy.last_upstream


WRITE_SUBJECT = {"created": b"$JS.API.STREAM.CREATE.", "updated": b"$JS.API.STREAM.UPDATE."}


async def until_replies_held(proxy: StallProxy, *, within: float = 15.0) -> None:
    """Until `hold_replies_after` has struck: a write is on its way, unanswered."""
    deadline = time.monotonic() + within
    while not proxy.stalled:
        assert time.monotonic() < deadline, "no write reached the proxy"
        await asyncio.sleep(0.005)


async def kill(victim: DaemonProc) -> None:
    victim.send(signal.SIGKILL)
    assert await victim.wait_exit(5) == -signal.SIGKILL


@pytest.mark.timeout(timeout(90, 600))
async def test_daemon_killed_mid_pass_leaves_nothing_that_blocks_convergence(
    scene: Scene,
) -> None:
    """The daemon killed -9 in the middle of a pass that creates (everything
    was deleted) or updates (everything was drifted) dozens of resources,
    its requests either carried out by the broker with no answer back yet,
    or stuck on a stalled path that dies with it (each kill counted as
    mid-pass only when the broker's audit and the victim's log prove it):
    the next process converges with exactly one action per resource still
    out of sync, whatever the killed one got done, and stops cleanly."""
    figure, rng = scene.figure, random.Random(9)
    proxy = await StallProxy(scene.server.port).start()
    try:
        config = scene.config(url=proxy.url, resources=chaos_resources() + bulk_streams(BULK))
        first = scene.start(config)
        await scene.converge(first, t0=time.monotonic(), after=0, reconnect=False)
        await Invariants(scene, first).stops_cleanly()
        # Kills that provably landed mid-pass, by kind (see each branch).
        mid_pass = {"delivered": 0, "lost": 0}
        for cycle in range(DAEMON_KILLS):
            action = "updated" if cycle % 2 else "created"
            change = drift_everything if cycle % 2 else delete_everything
            if cycle % 4 < 2:
                # Delivered: the pass's writes reach the broker, which carries
                # them out, and the kill lands before any answer gets back.
                await change(scene)
                before = (await scene.ledger.collect()).mark()
                proxy.hold_replies_after(WRITE_SUBJECT[action])
                victim = scene.start(config)
                await until_replies_held(proxy)
                await asyncio.sleep(rng.uniform(0.0, 0.1))  # more writes leave, unanswered
                await kill(victim)
                await proxy.cut()
                proxy.resume()
                # Mid-pass: writes of its pass reached the broker, and the pass
                # never ended (outcomes are logged once the whole pass is answered).
                await settled_out_of_sync(scene)
                reached = (await scene.ledger.collect(settle=0.1)).writes(after=before)
                mid_pass["delivered"] += bool(reached) and not victim.find(is_pass)
            else:
                # Lost: the pass's requests hang on a stalled path, and die with
                # the process and the path.
                victim = scene.start(config)
                await victim.wait_for(is_action("ready"), within=15)
                mark, stalled_at = victim.mark(), time.time()
                proxy.stall(upstream=True)
                await change(scene)
                held_at = await first_request_held(proxy, since=stalled_at)
                await asyncio.sleep(rng.uniform(0.0, 0.1))  # well inside its request timeout
                await kill(victim)
                await proxy.cut()
                proxy.resume()
                # Mid-pass: a request of its pass was held (it can get no answer),
                # and no pass ended after it was sent.
                ended = [
                    line
                    for line in victim.find(is_pass, after=mark)
                    if float(line["ts"]) > held_at + TS_PRECISION
                ]
                mid_pass["lost"] += not ended
            figure.faults += 1
            left = await settled_out_of_sync(scene)
            daemon = scene.start(config)
            took = await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
            figure.converged(took)
            # Its startup pass's outcomes are logged when that pass ends, and
            # the passes its own updates' advisories bring in the fast lane can
            # end first (the broker then already in sync): count once it ended.
            await daemon.wait_for(is_startup_pass, within=15)
            actions = daemon.count(is_action(action))
            late = len(scene.timed_out(daemon))
            assert len(left) - late <= actions <= len(left), (actions, left, daemon.tail())
            figure.heals += actions
            inv = Invariants(scene, daemon)
            if cycle == DAEMON_KILLS - 1:
                await inv.quiet_when_in_sync()
                await inv.no_destructive()
            await inv.stops_cleanly()
        assert all(mid_pass.values()), f"kills that landed mid-pass: {mid_pass}"
    finally:
        await proxy.close()
    figures.publish(figure)


CHAIN = pick(5, 50)  # deletes, each right after the daemon's re-create


@pytest.mark.timeout(timeout(60, 300))
async def test_deletes_right_after_creates_heal_without_any_advisory(scene: Scene) -> None:
    """The broker can drop the DELETED advisory of a stream deleted right after
    it was created. With advisories off altogether and the resync an hour
    away, a stream deleted as soon as the daemon has (re-)created it, over
    and over, is re-created each time by the daemon's second look shortly
    after its write (never by a resync), and exactly once per delete."""
    figure = scene.figure
    config = scene.config(watchdog={"advisories": False, "resync_interval": "1h"})
    daemon = scene.start(config)
    inv = Invariants(scene, daemon)
    target = "EXEC"
    await daemon.wait_for(is_action("created", stream=target), within=15)
    mark = daemon.mark()
    for n in range(1, CHAIN + 1):
        await api_ok(scene.nc, f"$JS.API.STREAM.DELETE.{target}")  # right after the create
        deleted_at = time.time()
        figure.faults += 1
        lines = await daemon.wait_for(
            is_action("created", stream=target), after=mark, n=n, within=5
        )
        assert lines[-1]["trigger"] == "verify", lines[-1]
        figure.converged(float(lines[-1]["ts"]) - deleted_at)
    figure.heals = CHAIN
    await scene.converge(daemon, t0=time.monotonic(), after=mark, reconnect=False)
    await scene.ledger.collect()
    assert len(scene.ledger.writes(stream=target)) == CHAIN + 1  # startup + one per delete
    assert daemon.count(is_action("created", stream=target), after=mark) == CHAIN
    await inv.no_destructive()
    await inv.stops_cleanly()
    figure.hostile(
        "advisories off, resync 1 h, a stream deleted right after each re-create (the broker "
        "drops some such advisories)",
        "re-created each time by the second look after the write, once per delete",
    )
    figures.publish(figure)


WAR_SECONDS = pick(3.0, 20.0)
ONE_DAY_NS = 86_400 * 10**9


async def fight_over_results(scene: Scene, stop: asyncio.Event) -> int:
    """Another writer that sets RESULTS max_age to 1d whenever it is not:
    every update of the daemon is undone at once. Returns its update count."""
    writes = 0
    while not stop.is_set():
        config = dict((await api_ok(scene.nc, "$JS.API.STREAM.INFO.RESULTS"))["config"])
        if config["max_age"] != ONE_DAY_NS:
            config["max_age"] = ONE_DAY_NS
            await api_ok(scene.nc, "$JS.API.STREAM.UPDATE.RESULTS", config)
            writes += 1
        await asyncio.sleep(0.005)
    return writes


@pytest.mark.timeout(timeout(60, 300))
async def test_a_writer_undoing_every_update_is_fought_a_few_times_then_reported(
    scene: Scene,
) -> None:
    """Another writer undoes each of the daemon's updates of RESULTS at once.
    The daemon updates it at most WRITES_PER_WINDOW times, then says once
    (ERROR) that RESULTS is not converging and writes it no more, while it
    goes on healing deletes of everything else; the daemon stays up."""
    figure = scene.figure
    daemon = scene.start(scene.config())
    inv = Invariants(scene, daemon)
    await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
    await inv.quiet_when_in_sync()
    before, mark = (await scene.ledger.collect()).mark(), daemon.mark()
    stop = asyncio.Event()
    war = asyncio.create_task(fight_over_results(scene, stop))
    figure.faults += 1
    started = time.monotonic()
    while time.monotonic() - started < WAR_SECONDS:
        heal = daemon.mark()
        await api_ok(scene.nc, "$JS.API.STREAM.DELETE.EVENTS")
        figure.faults += 1
        await daemon.wait_for(is_action("created", stream="EVENTS"), after=heal, within=5)
        figure.heals += 1
        await asyncio.sleep(0.2)
    stop.set()
    other_writes = await war
    await scene.ledger.collect(settle=0.2)
    ours = scene.ledger.writes(after=before, stream="RESULTS")
    assert len(ours) == WRITES_PER_WINDOW, [c.subject for c in ours]
    assert other_writes >= WRITES_PER_WINDOW
    errors = daemon.find(lambda line: line.get("level") == "error", after=mark)
    assert len(errors) == 1, errors
    assert "RESULTS is not converging" in errors[0]["message"]
    assert errors[0]["action"] == "blocked"
    figure.survived = figure.faults
    await inv.quiet_when_in_sync(skip=["RESULTS"])
    await inv.no_destructive()
    await inv.stops_cleanly()
    figure.hostile(
        "another client undoing every update of RESULTS at once",
        f"updated {WRITES_PER_WINDOW} times, then one ERROR `not converging` and no "
        "more writes of it; deletes of the others healed meanwhile",
    )
    figures.publish(figure)
