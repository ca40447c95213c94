"""Fixtures of the fault suite: a broker, a `Scene` around it, and the report.

At the end of the session the figures of every scenario that passed are
written to $KANADE_CHAOS_REPORT (Markdown, plus a .json twin) when it is set.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.chaos import figures, scale
from tests.chaos.harness import Scene
from tests.natsserver import NatsServer


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh single-node JetStream broker on loopback, killed at teardown."""
    srv = NatsServer(tmp_path).start()
    yield srv
    srv.kill()


@pytest.fixture
async def scene(
    tmp_path: Path, broker: NatsServer, request: pytest.FixtureRequest
) -> AsyncIterator[Scene]:
    """The broker with an admin client and the durable API audit in place."""
    figure = figures.Figure(scenario=request.node.name.removeprefix("test_"))
    world = await Scene(tmp_path, broker, figure).open()
    yield world
    await world.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get(scale.REPORT_ENV)
    if not target or not figures.PUBLISHED:
        return
    mode = "full (KANADE_CHAOS_FULL=1)" if scale.FULL else "short (CI)"
    header = (
        f"Fault suite, {mode} run, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{platform.machine()} {os.cpu_count()} cores, exit status {exitstatus}"
    )
    figures.write_report(Path(target), figures.PUBLISHED, header=header)
