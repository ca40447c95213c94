"""Shared fixtures: a real nats-server per test, the repo's config, a client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from tests.natsserver import NatsServer

REPO = Path(__file__).resolve().parent.parent
REPO_CONFIG = REPO / "config.toml"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh single-node JetStream broker on loopback."""
    srv = NatsServer(tmp_path).start()
    yield srv
    srv.stop()


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
