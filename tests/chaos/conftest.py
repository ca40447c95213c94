"""Fixtures of the fault suite: a `Scene` around the test's broker, and the report.

The broker is the shared `server` fixture (tests/conftest.py); scenarios
that need another kind of broker start it with `start_server` and build
their scene with `harness.scene_for`.

At the end of the session the figures of every scenario that passed are
written to $KANADE_CHAOS_REPORT (Markdown, plus a .json twin) when it is set.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.chaos import figures, scale
from tests.chaos.harness import Scene, scene_for
from tests.natsserver import NatsServer


@pytest.fixture
async def scene(
    tmp_path: Path, server: NatsServer, request: pytest.FixtureRequest
) -> AsyncIterator[Scene]:
    """The broker with an admin client and the durable API audit in place."""
    async with scene_for(tmp_path, server, request.node.name) as world:
        yield world


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
