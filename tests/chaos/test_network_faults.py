"""A stalled network path between the daemon and its broker: a TCP relay
(`tests.proxy.StallProxy`) that stops forwarding without closing anything.
Requests must time out instead of hanging, and the daemon must recover by
itself once the path resumes, whether its connection survived the stall
(short) or was given up as stale by the client's pings (long)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from kanade_watchdog.broker import api as broker_module
from tests.chaos import figures
from tests.chaos.harness import CHAOS_NATS, CHAOS_WATCHDOG, LEDGER, Scene
from tests.chaos.invariants import Invariants
from tests.chaos.ledger import api
from tests.chaos.scale import pick, timeout
from tests.daemonproc import Line, has_message, is_action
from tests.proxy import StallProxy

REQUEST_TIMEOUT = 0.5  # CHAOS_NATS request_timeout
RESYNC = 1.0  # CHAOS_WATCHDOG resync_interval
# The stream list may be given longer than other requests (a clustered broker
# waits for slow stream leaders before it answers).
LIST_TIMEOUT = max(REQUEST_TIMEOUT, float(getattr(broker_module, "LIST_WAIT", 0.0)))
# The longest a full read can take to fail, counted from the stall: the next
# resync, then the list request's own timeout.
READ_FAILS_WITHIN = RESYNC + LIST_TIMEOUT
SHORT_STALLS = pick(2, 10)
# Long enough for that read to time out, well inside the client's ping
# horizon (the connection is given up after 3 unanswered pings, 5 s apart).
SHORT_STALL = READ_FAILS_WITHIN + 1.5
LONG_STALL = 30.0  # past it: the client itself declares the connection stale
assert CHAOS_NATS["request_timeout"] == "500ms"
assert CHAOS_WATCHDOG["resync_interval"] == "1s"


def read_failed(line: Line) -> bool:
    """The worker's line (at any level) for a full read that got no answer."""
    text = str(line.get("message", ""))
    return "cannot read the broker's streams" in text and "no answer" in text


async def delete_some(scene: Scene, rng: random.Random, n: int) -> list[str]:
    victims = rng.sample([r.stream for r in scene.resources if r.stream != LEDGER], n)
    for stream in victims:
        answer = await api(scene.nc, f"$JS.API.STREAM.DELETE.{stream}")
        assert "error" not in answer, answer
    return victims


def not_present(observed_names: set[str], victims: list[str]) -> bool:
    return not (observed_names & set(victims))


async def stream_names(scene: Scene) -> set[str]:
    answer = await api(scene.nc, "$JS.API.STREAM.NAMES", {"offset": 0})
    return set(answer.get("streams") or [])


@pytest.mark.timeout(timeout(60, 300))
async def test_stalled_path_times_out_and_recovers_when_it_resumes(scene: Scene) -> None:
    """While the path is stalled the daemon's requests time out (its failed
    read of the stream list is logged before the stall ends, in every stall
    episode), no pass outlives its deadline, and once the path resumes it
    heals every resource deleted during the stall."""
    figure, rng = scene.figure, random.Random(3)
    proxy = await StallProxy(scene.server.port).start()
    try:
        daemon = scene.start(scene.config(url=proxy.url))
        inv = Invariants(scene, daemon)
        await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
        await inv.quiet_when_in_sync()
        inv.baseline()
        for _ in range(SHORT_STALLS):
            mark, wall = daemon.mark(), time.time()
            proxy.stall()
            figure.faults += 1
            victims = await delete_some(scene, rng, 3)
            # The read times out and says so before the path is resumed below.
            await daemon.wait_for(read_failed, after=mark, within=SHORT_STALL)
            while time.time() - wall < SHORT_STALL:  # the stall lasts this long
                inv.alive()
                assert not_present(await stream_names(scene), victims)  # nothing got through
                await asyncio.sleep(0.1)
            proxy.resume()
            took = await scene.converge(daemon, t0=time.monotonic(), after=mark, reconnect=False)
            figure.converged(took)
            assert not daemon.find(has_message("exceeded its"), after=mark), daemon.tail()
            assert not daemon.find(is_action("broker_lost"), after=mark), "short stall dropped"
            figure.heals += daemon.count(is_action("created"), after=mark)
            await inv.quiet_when_in_sync()
        inv.memory_flat()
        await inv.no_destructive()
        await inv.stops_cleanly()
    finally:
        await proxy.close()
    figures.publish(figure)


@pytest.mark.slow
@pytest.mark.timeout(timeout(120, 600))
async def test_stall_past_the_ping_horizon_reconnects_when_the_path_resumes(
    scene: Scene,
) -> None:
    """A stall longer than the client's ping horizon: the daemon declares the
    broker lost (once), keeps trying through the dead path without hanging or
    exiting, and reconnects and converges as soon as the path resumes."""
    figure, rng = scene.figure, random.Random(4)
    proxy = await StallProxy(scene.server.port).start()
    try:
        daemon = scene.start(scene.config(url=proxy.url))
        inv = Invariants(scene, daemon)
        await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
        await inv.quiet_when_in_sync()
        inv.baseline()
        for _ in range(pick(1, 3)):
            mark, started = daemon.mark(), time.monotonic()
            accepted = proxy.accepted
            proxy.stall()
            figure.faults += 1
            await delete_some(scene, rng, 4)
            await daemon.wait_for(is_action("broker_lost"), after=mark, within=LONG_STALL)
            while time.monotonic() - started < LONG_STALL:
                inv.alive()
                await asyncio.sleep(0.2)
            assert proxy.accepted > accepted, "no reconnect attempt during the stall"
            assert daemon.count(is_action("broker_lost"), after=mark) == 1
            proxy.resume()
            took = await scene.converge(daemon, t0=time.monotonic(), after=mark, reconnect=True)
            figure.converged(took)
            figure.heals += daemon.count(is_action("created"), after=mark)
            await inv.quiet_when_in_sync()
        inv.memory_flat()
        await inv.no_destructive()
        await inv.stops_cleanly()
    finally:
        await proxy.close()
    figures.publish(figure)
