"""The daemon stays alive and responsive whatever its surroundings do.

A broker whose TLS certificate the daemon cannot verify (at the first
connection and after a restart with a wrong certificate), a systemd notify
socket that keeps disappearing and coming back, a config file swapped for a
FIFO before SIGHUP, and reloads that move the daemon to another broker and
back: each time it says why once, keeps healing what it can, recovers by
itself once the fault is gone, and stops cleanly."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.certs import make_ca
from tests.chaos import figures
from tests.chaos.harness import Scene, delete_and_heal, list_streams, out_of_sync, scene_for
from tests.chaos.invariants import Invariants
from tests.chaos.ledger import connect
from tests.chaos.scale import pick, timeout
from tests.conftest import StartServer
from tests.daemonproc import DaemonProc, Line, Predicate, has_message, is_action
from tests.natsserver import NatsServer
from tests.sdnotify import NotifySocket
from tests.test_connection import with_tls

ROUNDS = pick(2, 10)


def warned(line: Line) -> bool:
    return line.get("level") == "warning"


def message_is(text: str) -> Predicate:
    def check(line: Line) -> bool:
        return line.get("message") == text

    return check


# --- TLS the daemon cannot verify -----------------------------------------------------------


@pytest.fixture
async def tls_scene(
    tmp_path: Path, start_server: StartServer, request: pytest.FixtureRequest
) -> AsyncIterator[Scene]:
    """A broker that requires TLS with a certificate of a CA made here; the
    test's own clients trust that CA. `tls_scene.tmp / "pki"` holds the rest."""
    pki = tmp_path / "pki"
    ca = make_ca(pki / "ca")
    good = ca.issue("server", dns=("localhost",), ips=("127.0.0.1",))
    wrong_name = ca.issue("elsewhere", dns=("broker.elsewhere.test",))
    for name, cert in (("good", good), ("wrong-name", wrong_name)):
        shutil.copy(cert.cert, pki / f"{name}.pem")
        shutil.copy(cert.key, pki / f"{name}.key")
    shutil.copy(ca.cert, pki / "ca.pem")
    shutil.copy(make_ca(pki / "other", "other-ca").cert, pki / "other-ca.pem")
    server = start_server(NatsServer(tmp_path / "tls", extra_conf=tls_conf(pki, "good")))
    client_tls = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    options = {"tls": client_tls}
    async with scene_for(tmp_path, server, request.node.name, admin_options=options) as world:
        yield world


def tls_conf(pki: Path, cert: str) -> str:
    return (
        f'tls {{\n  cert_file: "{pki / cert}.pem"\n  key_file: "{pki / cert}.key"\n'
        "  timeout: 2\n}\n"
    )


def serve_certificate(scene: Scene, cert: str) -> None:
    """Restart the broker (same port, same store) presenting another certificate."""
    scene.server.extra_conf = tls_conf(scene.tmp / "pki", cert)
    scene.server.restart()


@pytest.mark.timeout(timeout(90, 600))
async def test_tls_the_daemon_cannot_verify_is_explained_and_recovered_from(
    tls_scene: Scene,
) -> None:
    """First connection with the wrong CA: one warning with the TLS reason, the
    daemon retrying and alive; the CA file fixed and SIGHUP: it connects and
    converges. Then, round after round, the broker restarts presenting a
    certificate for another name (the daemon's reconnects fail, it says why)
    and then its right one again: the daemon reconnects and converges."""
    scene, pki = tls_scene, tls_scene.tmp / "pki"
    figure = scene.figure
    ca_file = scene.tmp / "trusted-ca.pem"
    shutil.copy(pki / "other-ca.pem", ca_file)
    config = with_tls(scene.config(), ca_file)
    daemon = scene.start(config)
    [first] = await daemon.wait_for(has_message("cannot connect yet: "), within=10)
    assert "certificate verify failed: unable to get local issuer certificate" in first["message"]
    await daemon.wait_for(has_message("cannot connect yet: "), n=3, within=10)
    assert daemon.count(warned) == 1, daemon.tail()
    figure.faults += 1
    mark = daemon.mark()
    shutil.copy(pki / "ca.pem", ca_file)
    daemon.send(signal.SIGHUP)
    took = await scene.converge(daemon, t0=time.monotonic(), after=mark, reconnect=True)
    figure.converged(took)
    inv = Invariants(scene, daemon)
    await inv.quiet_when_in_sync()
    inv.baseline()
    for _ in range(ROUNDS):
        mark = daemon.mark()
        serve_certificate(scene, "wrong-name")
        figure.faults += 1
        await daemon.wait_for(is_action("broker_lost"), after=mark, within=10)
        await asyncio.sleep(1.5)  # reconnect attempts meet the wrong certificate
        inv.alive()
        serve_certificate(scene, "good")
        took = await scene.converge(daemon, t0=time.monotonic(), after=mark, reconnect=True)
        figure.converged(took)
    inv.memory_flat()
    await inv.quiet_when_in_sync()
    await inv.no_destructive()
    await inv.stops_cleanly()
    figure.hostile(
        "first connection with a CA that cannot verify the broker; then restarts of the broker "
        "presenting a certificate for another name",
        "one warning with the TLS reason, retried; connected once the CA file is fixed and "
        "SIGHUP sent; after each restart, reconnected and converged",
    )
    figures.publish(figure)


# --- a notify socket that comes and goes ---------------------------------------------------


@pytest.mark.timeout(timeout(60, 300))
async def test_notify_socket_that_comes_and_goes_never_stops_the_daemon(scene: Scene) -> None:
    """With WATCHDOG_USEC set (a ping every 100 ms), the notify socket stops
    listening and comes back, round after round: the daemon logs one warning
    when it goes and one line when it is back (not one per ping), heals a
    delete in both states, and stops cleanly."""
    figure, rng = scene.figure, random.Random(11)
    notify = NotifySocket()
    reader = asyncio.create_task(keep_reading(notify))  # as the service manager does
    try:
        env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"}
        daemon = DaemonProc(scene.config(), env=env).start()
        scene.daemons.append(daemon)
        inv = Invariants(scene, daemon)
        await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
        await daemon.wait_for(is_action("ready"))
        for _ in range(ROUNDS):
            notify.refuse()
            said = daemon.mark()
            await delete_and_heal(scene, daemon, rng)
            await daemon.wait_for(has_message("cannot notify systemd"), after=said)
            await asyncio.sleep(0.3)  # more pings fail meanwhile, still one warning
            mark = len(notify.drain())
            notify.rebind()
            said = daemon.mark()
            await delete_and_heal(scene, daemon, rng)
            await daemon.wait_for(has_message("delivered again"), after=said)
            await until(pinged_since(notify, mark), "pings resume")
        gone = daemon.count(has_message("cannot notify systemd"))
        back = daemon.count(has_message("systemd notifications are delivered again"))
        assert (gone, back) == (ROUNDS, ROUNDS), daemon.tail()
        await inv.quiet_when_in_sync()
        await inv.no_destructive()
        await inv.stops_cleanly()
    finally:
        reader.cancel()
        notify.close()
    figure.hostile(
        "the systemd notify socket refusing, then back, with a watchdog ping every 100 ms",
        "one warning when it goes, one line when it is back; deletes healed in both states; "
        "never exits",
    )
    figures.publish(figure)


async def until(check: Callable[[], bool], what: str, *, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {within}s"
        await asyncio.sleep(0.01)


def pinged_since(notify: NotifySocket, mark: int) -> Callable[[], bool]:
    return lambda: bool(notify.having("WATCHDOG", since=mark))


async def keep_reading(notify: NotifySocket) -> None:
    while True:
        notify.drain()
        await asyncio.sleep(0.01)


# --- SIGHUP on a file that never finishes reading -------------------------------------------


@pytest.mark.timeout(timeout(60, 300))
async def test_sighup_on_a_fifo_config_keeps_healing_and_stopping(scene: Scene) -> None:
    """The config path swapped for a FIFO nobody writes, then SIGHUP (several):
    whatever the read does, deletes are healed meanwhile and SIGTERM stops
    the daemon with exit 0 promptly."""
    figure, rng = scene.figure, random.Random(12)
    config = scene.config()
    daemon = scene.start(config)
    inv = Invariants(scene, daemon)
    await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
    config.unlink()
    os.mkfifo(config)
    for _ in range(ROUNDS):
        daemon.send(signal.SIGHUP)
        figure.faults += 1
        await delete_and_heal(scene, daemon, rng)
    assert daemon.count(is_action("reloaded")) == 0
    await inv.no_destructive()
    await inv.stops_cleanly(within=5)
    figure.hostile(
        "the config path swapped for a FIFO nobody writes, then SIGHUP",
        "no reload, deletes healed meanwhile, SIGTERM exits 0",
    )
    figures.publish(figure)


# --- reloads that move the daemon to another broker -----------------------------------------


@pytest.mark.timeout(timeout(60, 300))
async def test_reloads_to_another_broker_and_back_converge_each_one(
    scene: Scene, start_server: StartServer
) -> None:
    """A reload pointing [nats].servers at a second broker makes the daemon
    name that broker when connecting and create everything there; a reload
    back converges the first one again (nothing deleted on either)."""
    figure = scene.figure
    other = start_server(NatsServer(scene.tmp / "other", name="other"))
    admin = await connect(other.url, "chaos-other")
    try:
        config = scene.config()
        daemon = scene.start(config)
        inv = Invariants(scene, daemon)
        await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
        here = scene.server.url
        for _ in range(ROUNDS):
            for target in (other.url, here):
                mark = daemon.mark()
                source = here if target == other.url else other.url
                config.write_text(config.read_text().replace(source, target))
                daemon.send(signal.SIGHUP)
                figure.faults += 1
                await daemon.wait_for(message_is(f"connecting to {target}"), after=mark)
                nc = admin if target == other.url else scene.nc
                started = time.monotonic()
                while True:
                    observed = await list_streams(nc)
                    lagging = out_of_sync(scene.resources, observed or {})
                    if observed is not None and not lagging:
                        break
                    assert time.monotonic() - started < 15, lagging
                    await asyncio.sleep(0.05)
                figure.converged(time.monotonic() - started)
        assert daemon.find(has_message("connecting to "))[-1]["message"] == f"connecting to {here}"
        await inv.quiet_when_in_sync()
        await inv.no_destructive()
        await inv.stops_cleanly()
    finally:
        await admin.close()
    figures.publish(figure)
