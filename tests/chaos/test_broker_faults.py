"""Broker faults: kill -9 and restart (a producer publishing the whole time),
a wiped store, a broker down for a long while, a broker frozen or stopped
while a pass has requests in flight. Every scenario ends with the shared
invariants (`invariants`)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import pytest

from kanade_watchdog.broker.api import LIST_WAIT
from tests.chaos import figures
from tests.chaos.harness import (
    BULK,
    LEDGER,
    LEDGER_SUBJECT,
    Scene,
    bulk_streams,
    chaos_resources,
    is_heal,
)
from tests.chaos.invariants import Invariants, cpu_seconds
from tests.chaos.ledger import Producer, api
from tests.chaos.scale import pick, timeout
from tests.daemonproc import is_action
from tests.proxy import StallProxy

KILL_CYCLES = pick(6, 60)
WARM_UP = pick(2, 5)  # cycles before the memory baseline: first reconnect paths
WIPE_CYCLES = pick(2, 6)
DOWN_SECONDS = pick(3.0, 150.0)  # the full run outlasts nats-py's own ~2 min give-up
STOP_CYCLES = pick(3, 12)


async def delete_stream(scene: Scene, stream: str) -> bool:
    answer = await api(scene.nc, f"$JS.API.STREAM.DELETE.{stream}")
    return "error" not in answer


@pytest.mark.timeout(timeout(120, 900))
async def test_kill_9_cycles_lose_no_acknowledged_message(scene: Scene) -> None:
    """kill -9 of the broker and a restart on the same store, cycle after cycle,
    with a producer publishing to a declared stream throughout: the daemon
    stays up, reconverges after every restart (heals started just before a
    kill included), and every acknowledged message is still in the stream."""
    figure, rng = scene.figure, random.Random(1)
    daemon = scene.start(scene.config())
    inv = Invariants(scene, daemon)
    await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
    producer = await Producer(scene.server.url, LEDGER_SUBJECT).start()
    try:
        await producer.wait_acks(50)
        await inv.quiet_when_in_sync()
        inv.baseline()
        heals_before = scene.heals(daemon)
        for cycle in range(KILL_CYCLES):
            if cycle == WARM_UP:
                inv.baseline()
            await asyncio.sleep(rng.uniform(0.05, 0.4))  # lands idle, mid-pass, mid-publish
            mark = daemon.mark()
            if cycle % 3 == 2:
                # A heal under way when the broker dies: it must finish after.
                victim = rng.choice([r.stream for r in scene.resources if r.stream != LEDGER])
                assert await delete_stream(scene, victim)
            scene.server.kill()
            figure.faults += 1
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            scene.server.start()
            took = await scene.converge(daemon, t0=time.monotonic(), after=mark, reconnect=True)
            figure.converged(took)
            assert await producer.quick_check(scene.nc, LEDGER) == []
            await producer.wait_acks(5)  # publishing again, through the same stream
        inv.memory_flat()
        await inv.quiet_when_in_sync()
    finally:
        await producer.stop()
    lost = await producer.verify(scene.nc, LEDGER)
    figure.acked, figure.lost = len(producer.acked), len(lost)
    figure.heals = scene.heals(daemon) - heals_before
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. seqs {lost[:10]}"
    await inv.no_destructive()
    await inv.stops_cleanly()
    figures.publish(figure)


@pytest.mark.timeout(timeout(60, 300))
async def test_restart_on_a_wiped_store_recreates_everything(scene: Scene) -> None:
    """A broker that comes back with an empty store gets every declared
    resource back from the daemon (one `created` line each), without a
    restart of the daemon."""
    figure = scene.figure
    proxy = await StallProxy(scene.server.port).start()
    try:
        daemon = scene.start(scene.config(url=proxy.url))
        inv = Invariants(scene, daemon)
        await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
        await inv.quiet_when_in_sync()
        inv.baseline()
        for _ in range(WIPE_CYCLES):
            # The wipe takes the audit stream too: read it first, and keep the
            # daemon off the broker until it is back, so no call goes unseen.
            await scene.ledger.collect()
            proxy.refuse(True)
            await proxy.cut()
            mark = daemon.mark()
            scene.server.kill()
            scene.server.wipe_store()
            scene.server.start()
            await scene.ledger.ensure()
            figure.faults += 1
            proxy.refuse(False)
            took = await scene.converge(daemon, t0=time.monotonic(), after=mark, reconnect=True)
            figure.converged(took)
            created = daemon.count(is_action("created"), after=mark)
            late = len(scene.timed_out(daemon, after=mark))
            assert len(scene.resources) - late <= created <= len(scene.resources), daemon.tail()
            figure.heals += created
            await inv.quiet_when_in_sync()
        inv.memory_flat()
        await inv.no_destructive()
        await inv.stops_cleanly()
    finally:
        await proxy.close()
    figures.publish(figure)


@pytest.mark.timeout(timeout(60, 420))
async def test_broker_down_for_a_long_while_then_back(scene: Scene) -> None:
    """With the broker down (for minutes in the full run) the daemon logs the
    loss once, stays up without spinning (little CPU, few log lines), and
    converges once the broker is back."""
    figure = scene.figure
    daemon = scene.start(scene.config())
    inv = Invariants(scene, daemon)
    await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
    await inv.quiet_when_in_sync()
    inv.baseline()
    await scene.ledger.collect()
    mark = daemon.mark()
    scene.server.kill()
    figure.faults += 1
    await daemon.wait_for(is_action("broker_lost"), after=mark, within=5)
    cpu_before, down_at = cpu_seconds(daemon), time.monotonic()
    while time.monotonic() - down_at < DOWN_SECONDS:  # the fault itself lasts this long
        inv.alive()
        await asyncio.sleep(min(0.5, DOWN_SECONDS / 4))
    cpu = cpu_seconds(daemon) - cpu_before
    loud = [
        line
        for line in daemon.find(lambda _l: True, after=mark)
        if line.get("level") in ("warning", "error")
        and str(line.get("logger")).startswith("kanade")
    ]
    assert cpu < 0.1 * DOWN_SECONDS + 0.5, f"{cpu:.2f}s CPU in {DOWN_SECONDS}s down"
    assert daemon.count(is_action("broker_lost"), after=mark) == 1, daemon.tail()
    assert len(loud) <= 3, loud
    back = daemon.mark()
    scene.server.start()
    took = await scene.converge(daemon, t0=time.monotonic(), after=back, reconnect=True)
    figure.converged(took)
    await inv.quiet_when_in_sync()
    inv.memory_flat()
    await inv.no_destructive()
    await inv.stops_cleanly()
    figures.publish(figure)


async def first_create(scene: Scene, after: int, within: float = 10.0) -> None:
    """Until the broker's audit shows the pass's first create: its other
    creates are in flight or queued behind it (the daemon logs a pass's
    outcomes only when the pass ends)."""
    deadline = time.monotonic() + within
    while not any(c.verb == "STREAM.CREATE" for c in scene.ledger.writes(after=after)):
        assert time.monotonic() < deadline, "the pass sent no create"
        await scene.ledger.collect(settle=0)
        await asyncio.sleep(0.002)


@pytest.mark.timeout(timeout(90, 600))
async def test_broker_stopped_while_a_pass_has_requests_in_flight(scene: Scene) -> None:
    """The broker frozen (SIGSTOP) right after the first `created` of a pass
    with dozens of creates to do, then killed, stopped gracefully or thawed:
    the unanswered requests time out, and once the broker answers again the
    daemon creates whatever is still missing and converges."""
    figure, rng = scene.figure, random.Random(2)
    daemon = scene.start(scene.config(resources=chaos_resources() + bulk_streams(BULK)))
    inv = Invariants(scene, daemon)
    mark, finished_after = 0, 0
    for cycle in range(STOP_CYCLES):
        audit_mark = (await scene.ledger.collect(settle=0)).mark()
        if cycle:
            mark = daemon.mark()
            names = [r.stream for r in scene.resources]
            rng.shuffle(names)
            assert all(await asyncio.gather(*(delete_stream(scene, s) for s in names)))
        await first_create(scene, audit_mark)
        assert scene.server.proc is not None
        os.kill(scene.server.proc.pid, signal.SIGSTOP)  # every request now goes unanswered
        figure.faults += 1
        await asyncio.sleep(rng.uniform(0.3, 1.0))  # past the 500 ms request timeout
        inv.alive()
        restart = daemon.mark()
        how = cycle % 3
        if how == 0:
            scene.server.kill()
            scene.server.start()
        elif how == 1:
            os.kill(scene.server.proc.pid, signal.SIGCONT)
            scene.server.stop()
            scene.server.start()
        else:
            os.kill(scene.server.proc.pid, signal.SIGCONT)  # thawed: same connection
        took = await scene.converge(daemon, t0=time.monotonic(), after=restart, reconnect=how != 2)
        figure.converged(took)
        figure.heals += daemon.count(is_heal, after=mark)
        finished_after += daemon.count(is_action("created"), after=restart)
    # Creates the freeze cut off were done once the broker answered again.
    assert finished_after > 0, "no cycle caught requests in flight"
    await inv.quiet_when_in_sync()
    await inv.no_destructive()
    await inv.stops_cleanly()
    figures.publish(figure)


@pytest.mark.timeout(60)
async def test_broker_killed_with_a_stream_list_in_flight_reconverges_at_once(
    scene: Scene,
) -> None:
    """A broker that dies while the daemon's stream list request is unanswered
    (frozen, then killed) and comes straight back: the daemon does not wait
    out the dead request; it has reconverged before that request's own wait
    (`broker.LIST_WAIT`) could have ended."""
    daemon = scene.start(scene.config())
    await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
    mark = daemon.mark()
    await daemon.wait_for(
        lambda line: str(line.get("message")).startswith("pass (resync)"), after=mark, within=5
    )
    assert scene.server.proc is not None
    os.kill(scene.server.proc.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    await asyncio.sleep(1.3)  # the next resync (1 s) sends its list into the frozen broker
    mark = daemon.mark()
    scene.server.kill()
    scene.server.start()
    # That list went out after the freeze: waiting it out would end no sooner
    # than LIST_WAIT after the freeze.
    took = await scene.converge(daemon, t0=frozen_at, after=mark, reconnect=True)
    assert took < LIST_WAIT, f"{took:.2f}s after the freeze: the dead request was waited out"
