"""Recovery driven by the broker's readiness: the connect pace (a closed
port retried at the port pace, anything else at the slow growing pace) and
the JetStream readiness probe, on injected time and on a broker started late.
No speed asserted: the pacing rules and the order of events are.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlparse

import nats
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Server
from tenacity import RetryCallState

from kanade_watchdog.broker.connect import (
    MAX_RECONNECT_WAIT,
    PORT_PACE_CAP,
    ConnectPace,
    QuietErrors,
    connect_forever,
    reconnect_pacing,
)
from kanade_watchdog.broker.link import jetstream_ready
from kanade_watchdog.model.settings import NatsSettings
from tests.conftest import StartServer
from tests.natsserver import NatsServer, free_port

BASE = 0.25


def server(reconnects: int) -> Server:
    return Server(uri=urlparse("nats://127.0.0.1:4222"), reconnects=reconnects)


def quiet_after(exc: Exception | None) -> QuietErrors:
    quiet = QuietErrors()
    quiet.latest = exc
    return quiet


@given(st.integers(min_value=0, max_value=100_000))
def test_a_closed_port_is_retried_at_the_port_pace_however_long_the_outage(
    reconnects: int,
) -> None:
    pick = reconnect_pacing(BASE, quiet_after(ConnectionRefusedError(111, "refused")))
    _, delay = pick([server(reconnects)], {})
    assert 0 < delay <= PORT_PACE_CAP


@given(st.integers(min_value=1, max_value=100_000))
def test_a_broker_that_answers_and_fails_us_is_not_hammered(reconnects: int) -> None:
    """A TLS handshake that fails, credentials refused: the pause grows."""
    pick = reconnect_pacing(BASE, quiet_after(OSError("TLS handshake failed")))
    _, delay = pick([server(reconnects)], {})
    assert delay >= 0.8 * min(BASE * 1.5 ** min(reconnects, 60), MAX_RECONNECT_WAIT)
    assert delay > PORT_PACE_CAP


def test_the_first_try_after_a_lost_connection_goes_at_once() -> None:
    _, delay = reconnect_pacing(BASE, quiet_after(EOFError()))([server(0)], {})
    assert delay <= PORT_PACE_CAP


def test_the_first_connect_keeps_the_port_pace_then_slows_for_other_failures() -> None:
    quiet = quiet_after(ConnectionRefusedError(111, "refused"))
    pace = ConnectPace(quiet, BASE)
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    for attempt in range(1, 2000):
        state.attempt_number = attempt
        assert pace(state) <= PORT_PACE_CAP
    quiet.latest = OSError("authorization violation")
    assert pace(state) >= BASE


async def test_readiness_probe_retries_no_responders_until_its_injected_limit(
    server: NatsServer,
) -> None:
    """Nobody answers on a domain that does not exist: the probe tries again
    and again (never one long wait), and gives up at its limit."""
    ticks = 0

    def clock() -> float:
        nonlocal ticks
        ticks += 1
        return ticks * 0.1

    nc = await nats.connect(server.url)
    try:
        assert not await jetstream_ready(nc, "$JS.nowhere.API", within=2.0, clock=clock)
        assert ticks > 5
        assert await jetstream_ready(nc, "$JS.API")
    finally:
        await nc.close()


async def test_a_broker_started_late_is_connected_once_its_port_answers(
    tmp_path: Path, start_server: StartServer
) -> None:
    port = free_port()
    errors: list[str] = []
    seen = asyncio.Event()

    def sink(text: str) -> None:
        errors.append(text)
        if len(errors) >= 5:
            seen.set()

    async def nothing() -> None:
        return None

    settings = NatsSettings(servers=(f"nats://127.0.0.1:{port}",))
    connecting = asyncio.create_task(
        connect_forever(
            settings, on_closed=nothing, on_disconnect=nothing, on_reconnect=nothing, on_error=sink
        )
    )
    try:
        await asyncio.wait_for(seen.wait(), 30)
        assert not connecting.done()
        assert all("refused" in e.lower() or "connect call failed" in e.lower() for e in errors)
        start_server(NatsServer(tmp_path, port=port))
        nc = await asyncio.wait_for(connecting, 30)
    except BaseException:
        connecting.cancel()
        raise
    try:
        assert nc.is_connected
        assert await jetstream_ready(nc, "$JS.API")
    finally:
        await nc.close()


pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
