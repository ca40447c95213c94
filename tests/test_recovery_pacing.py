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

from kanade_watchdog.broker import connect, forever
from kanade_watchdog.broker.connect import (
    MAX_RECONNECT_WAIT,
    PORT_PACE,
    QuietErrors,
    reconnect_pacing,
)
from kanade_watchdog.broker.forever import ConnectPace, connect_forever
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
    assert 0 < delay <= PORT_PACE


@given(st.integers(min_value=1, max_value=100_000))
def test_a_broker_that_answers_and_fails_us_is_not_hammered(reconnects: int) -> None:
    """A TLS handshake that fails, credentials refused: the pause grows."""
    pick = reconnect_pacing(BASE, quiet_after(OSError("TLS handshake failed")))
    _, delay = pick([server(reconnects)], {})
    assert delay >= 0.8 * min(BASE * 1.5 ** min(reconnects, 60), MAX_RECONNECT_WAIT)
    assert delay > PORT_PACE


def test_the_first_try_after_a_lost_connection_goes_at_once() -> None:
    _, delay = reconnect_pacing(BASE, quiet_after(EOFError()))([server(0)], {})
    assert delay <= PORT_PACE


def retry_state(attempt: int, failed_with: BaseException | None = None) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    if failed_with is not None:
        state.set_exception((type(failed_with), failed_with, None))
    return state


def test_the_first_connect_keeps_the_port_pace_then_slows_for_other_failures() -> None:
    quiet = quiet_after(ConnectionRefusedError(111, "refused"))
    pace = ConnectPace(quiet, BASE)
    for attempt in range(1, 2000):
        assert pace(retry_state(attempt)) <= PORT_PACE
        assert pace.refused
    quiet.latest = OSError("authorization violation")
    assert pace(retry_state(2000)) >= BASE
    assert not pace.refused


def test_a_refused_knock_keeps_the_port_pace_and_a_silent_host_slows_it() -> None:
    """The knock raises the refusal itself (the client's error callback saw
    nothing this time); a host that does not answer is not a closed port."""
    pace = ConnectPace(quiet_after(None), BASE)
    assert pace(retry_state(5, ConnectionRefusedError(111, "refused"))) == PORT_PACE
    assert pace(retry_state(6, TimeoutError())) >= BASE
    assert not pace.refused


async def test_a_closed_port_is_knocked_on_without_building_a_client_each_time(
    tmp_path: Path, start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker started late is connected once its port answers. Only the
    first try and the one after the port opens are whole nats-py attempts (a
    client each; only they reach the client's error callback); the tries
    between are bare TCP connects in a plain loop, not turns of the retry
    machinery (tenacity, the pace, the retry log: ~0.6 ms of CPU each).
    Counted, not timed."""
    port = free_port()
    errors: list[str] = []
    whole: list[str] = []
    turns = knocks = 0
    knocked = asyncio.Event()
    attempt, pace, knock = connect.attempt, ConnectPace.__call__, forever.knock

    async def counted(settings: NatsSettings, **options: object) -> object:
        whole.append("attempt")
        return await attempt(settings, **options)

    def counted_pace(self: ConnectPace, state: RetryCallState) -> float:
        nonlocal turns
        turns += 1
        return pace(self, state)

    async def counted_knock(settings: NatsSettings) -> None:
        nonlocal knocks
        knocks += 1
        if knocks >= 20:
            knocked.set()
        await knock(settings)

    monkeypatch.setattr(connect, "attempt", counted)
    monkeypatch.setattr(ConnectPace, "__call__", counted_pace)
    monkeypatch.setattr(forever, "knock", counted_knock)

    async def nothing() -> None:
        return None

    settings = NatsSettings(servers=(f"nats://127.0.0.1:{port}",))
    connecting = asyncio.create_task(
        connect_forever(
            settings,
            on_closed=nothing,
            on_disconnect=nothing,
            on_reconnect=nothing,
            on_error=errors.append,
        )
    )
    try:
        await asyncio.wait_for(knocked.wait(), 30)
        assert (len(whole), turns) == (1, 1)
        assert errors
        assert all("refused" in e.lower() or "connect call failed" in e.lower() for e in errors)
        start_server(NatsServer(tmp_path, port=port))
        nc = await asyncio.wait_for(connecting, 30)
    except BaseException:
        connecting.cancel()
        raise
    try:
        assert nc.is_connected
        assert len(whole) == 2
        assert await jetstream_ready(nc, "$JS.API")
    finally:
        await nc.close()


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


pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
