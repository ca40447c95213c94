"""SIGHUP never freezes the daemon: the config is read off the event loop.

A real `kanade-watchdog run` whose config file is swapped for a FIFO that
nobody writes: the read started by SIGHUP can never finish, yet the daemon
keeps healing and SIGTERM still stops it with exit 0. (`test_aio` proves the
thread it reads in cannot keep the process alive; `test_daemon` covers
reloads of regular files.)
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from tests.audit import ApiAudit
from tests.daemonproc import WATCHDOG_NAME, DaemonProc, daemon_config, is_action
from tests.natsserver import NatsServer

RESOURCES = '[streams.ORDERS]\nsubjects = ["orders.>"]\n\n[streams.EVENTS]\nsubjects = ["ev.>"]\n'


@pytest.fixture
def spawn() -> Iterator[Callable[[Path], DaemonProc]]:
    procs: list[DaemonProc] = []

    def start(config: Path) -> DaemonProc:
        proc = DaemonProc(config).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.close()
    for proc in procs:
        assert proc.raw == [], "\n".join(proc.raw)


def swap_for_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


async def test_sighup_on_a_fifo_neither_stops_healing_nor_sigterm(
    tmp_path: Path, client: Client, server: NatsServer, spawn: Callable[[Path], DaemonProc]
) -> None:
    """The config path turned into a FIFO with no writer, then SIGHUP: the
    reload's read hangs in its own thread while the daemon heals a deleted
    stream through its advisory; SIGTERM then exits 0 within a second or two."""
    config = daemon_config(tmp_path / "w.toml", server.url, resources=RESOURCES)
    proc = spawn(config)
    await proc.wait_for(is_action("ready"), within=15)
    audit = await ApiAudit(client, client_name=WATCHDOG_NAME).start()
    swap_for_fifo(config)
    proc.send(signal.SIGHUP)
    await proc.quiet(0.3)

    mark = proc.mark()
    await client.jetstream().delete_stream("ORDERS")
    [healed] = await proc.wait_for(is_action("created", stream="ORDERS"), after=mark, within=5)
    assert healed["trigger"] == "advisory"

    started = time.monotonic()
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit(within=10) == 0
    assert time.monotonic() - started < 3.0
    assert proc.count(is_action("reloaded")) == 0
    await audit.settle(0.05)
    assert audit.destructive == 0
