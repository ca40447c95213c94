"""Shared fixtures: a real nats-server per test, more on demand, the repo's config, a client.

`server` is the one broker most tests need; `start_server` starts others
(authorization, TLS, a JetStream domain, a second broker to move to) and
stops every one of them at teardown, whatever the test left them in.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import nats
import pytest
from nats.aio.client import Client

from tests.natsserver import NatsServer

if TYPE_CHECKING:
    from tests.daemonproc import DaemonProc

REPO = Path(__file__).resolve().parent.parent
REPO_CONFIG = REPO / "config.toml"

StartServer = Callable[[NatsServer], NatsServer]


@pytest.fixture(autouse=True)
def _unfrozen_heap() -> Iterator[None]:
    """An in-process worker freezes the heap after a full pass (`daemon.heap`),
    as the daemon does: in the test process that would keep every later
    test's cycles from the collector, so each test ends unfrozen."""
    yield
    gc.unfreeze()


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """Start the brokers a test builds; each is stopped at teardown (a frozen
    or already killed one too)."""
    started: list[NatsServer] = []

    def run(srv: NatsServer) -> NatsServer:
        started.append(srv)
        srv.workdir.mkdir(parents=True, exist_ok=True)
        return srv.start()

    yield run
    for srv in started:
        srv.stop()


@pytest.fixture
def server(tmp_path: Path, start_server: StartServer) -> NatsServer:
    """A fresh single-node JetStream broker on loopback."""
    return start_server(NatsServer(tmp_path))


@pytest.fixture
async def client(server: NatsServer) -> AsyncIterator[Client]:
    """A plain nats-py client (the 'second client' that deletes and drifts)."""
    nc = await nats.connect(server.url)
    yield nc
    await nc.close()


def config_for(server_url: str, tmp_path: Path, source: Path = REPO_CONFIG) -> Path:
    """The repo's config.toml pointed at a test broker."""
    text = source.read_text().replace("nats://127.0.0.1:4222", server_url)
    path = tmp_path / "watchdog.toml"
    path.write_text(text)
    return path


@pytest.fixture
def spawn() -> Iterator[Callable[[Path], DaemonProc]]:
    """Start real daemons (`tests.daemonproc.DaemonProc`) during a test; each is
    closed after it, and none may have printed a line that is not JSON."""
    from tests.daemonproc import DaemonProc  # it imports this module

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
