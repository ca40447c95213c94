"""The daemon's first connection: retried until a server accepts it, never given up.

Connection errors (`connect.CONNECTION_ERRORS`) are retried by tenacity,
anything else is a bug and propagates. While nothing listens on the
broker's port the retries only knock (a bare TCP connect) and build a
client once a port accepts; any other failure backs off (`ConnectPace`).
Apart from `connect` so that the one-shot commands, which connect once,
never import tenacity.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from nats.aio.client import Client
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from kanade_watchdog.broker import connect
from kanade_watchdog.broker.connect import (
    CONNECTION_ERRORS,
    PORT_PACE,
    QuietErrors,
    describe,
    port_closed,
    reason,
    reconnect_pacing,
)
from kanade_watchdog.model.settings import NatsSettings

log = logging.getLogger("kanade_watchdog.connection")

Callback = Callable[[], Awaitable[None]]

MAX_CONNECT_WAIT = 30.0  # pacing cap for failures other than a closed port
# A closed port is knocked on at `connect.PORT_PACE`, the floor's 20 ms: a
# whole attempt builds a nats-py client and goes through tenacity and the
# retry log (~1 ms of CPU), a knock is a bare TCP connect in a plain loop
# (~0.2 ms with the loop's wake-up), so a broker that comes back is found
# 10 ms later on average for ~2 % of a core while it is away, as much as
# the old 50 ms pace of whole attempts cost. (Knocking every 10 ms would
# save 5 ms once, for twice the CPU all along.)
DEFAULT_PORTS = {"ws": 80, "wss": 443}  # anything else: NATS's own 4222


def _address(url: str) -> tuple[str, int]:
    """host and port of a server URL as nats-py reads it ("host:port" is nats://)."""
    parsed = urlsplit(url if "://" in url else f"nats://{url}")
    return parsed.hostname or "127.0.0.1", parsed.port or DEFAULT_PORTS.get(parsed.scheme, 4222)


async def knock(settings: NatsSettings) -> None:
    """Returns once some server's port accepts a TCP connect (closed again at
    once), or with no server to knock on; raises the refusal when every
    port is closed. Bounded by
    connect_timeout per server: a host that does not answer raises
    TimeoutError, a failure that is not a refusal, so the pace slows."""
    refused: OSError | None = None
    for url in settings.servers:
        host, port = _address(url)
        try:
            async with asyncio.timeout(settings.connect_timeout):
                _, writer = await asyncio.open_connection(host, port)
        except ConnectionRefusedError as exc:
            refused = exc
            continue
        writer.close()
        return
    if refused is not None:
        raise refused


async def until_a_port_accepts(settings: NatsSettings) -> None:
    """Knocks every PORT_PACE while every port refuses; returns once one
    accepts. Any other failure of a knock (a host that does not answer)
    is raised: it is retried at the slow pace."""
    while True:
        try:
            await knock(settings)
        except ConnectionRefusedError:
            await asyncio.sleep(PORT_PACE)
        else:
            return


class ConnectPace:
    """tenacity's wait for the daemon's first connect: the port pace while
    the broker's port is closed, else the growing pause (wrong credentials, a
    TLS handshake that fails, a host that does not answer). `refused` says
    the last try found the port closed: the next one knocks until a port
    accepts (`until_a_port_accepts`)."""

    def __init__(self, quiet: QuietErrors, base: float) -> None:
        self.quiet = quiet
        self.slow = wait_exponential_jitter(multiplier=base, max=MAX_CONNECT_WAIT, jitter=base)
        self.refused = False

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        self.refused = port_closed(exc) or port_closed(self.quiet.latest)
        if self.refused:
            return PORT_PACE
        return float(self.slow(state))


async def connect_forever(
    settings: NatsSettings,
    *,
    on_closed: Callback,
    on_disconnect: Callback,
    on_reconnect: Callback,
    on_error: Callable[[str], object] | None = None,
) -> Client:
    """For the daemon: returns once a server accepts us, trying with growing
    pauses meanwhile; the client then reconnects forever on its own. Only
    `CONNECTION_ERRORS` are retried: any other exception propagates.
    Cancel the awaiting task to give up (shutdown)."""
    quiet = QuietErrors(sink=on_error)
    gate = _Gate(on_closed=on_closed, on_disconnect=on_disconnect, on_reconnect=on_reconnect)
    pace = ConnectPace(quiet, settings.reconnect_wait)
    retrying = AsyncRetrying(
        wait=pace,
        retry=retry_if_exception_type(CONNECTION_ERRORS),
        before_sleep=_RetryLog(quiet, settings).before_sleep,
        reraise=True,
    )
    async for turn in retrying:
        with turn:
            if pace.refused:
                # Nothing listened at the last try: a whole client only once
                # a port accepts.
                await until_a_port_accepts(settings)
            quiet.latest = None  # the reason of this attempt, not of an earlier one
            nc = await connect.attempt(
                settings,
                # One pass over the pool per attempt; tenacity paces the attempts.
                max_reconnect_attempts=1,
                # The attempt's second try at a server comes at once: `ConnectPace`
                # paces the attempts.
                reconnect_time_wait=0,
                reconnect_to_server_handler=reconnect_pacing(settings.reconnect_wait, quiet),
                error_cb=quiet.callback,
                closed_cb=gate.closed,
                disconnected_cb=gate.disconnected,
                reconnected_cb=gate.reconnected,
            )
    # Once connected, never stop reconnecting: the pacing hook spaces attempts.
    nc.options["allow_reconnect"] = True
    nc.options["max_reconnect_attempts"] = -1
    nc.options["reconnect_time_wait"] = settings.reconnect_wait
    gate.open = True
    return nc


class _Gate:
    """The daemon's connection callbacks, passed on only once connected: the
    background close of a failed attempt must not look like a lost connection."""

    def __init__(
        self, *, on_closed: Callback, on_disconnect: Callback, on_reconnect: Callback
    ) -> None:
        self.open = False
        self._closed, self._disconnect, self._reconnect = on_closed, on_disconnect, on_reconnect

    async def closed(self) -> None:
        if self.open:
            await self._closed()

    async def disconnected(self) -> None:
        if self.open:
            await self._disconnect()

    async def reconnected(self) -> None:
        if self.open:
            await self._reconnect()


class _RetryLog:
    """One line per distinct reason the broker cannot be reached, not one per attempt."""

    def __init__(self, quiet: QuietErrors, settings: NatsSettings) -> None:
        self.quiet = quiet
        self.settings = settings
        self.last = ""

    def before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None:
            exc = reason(exc, self.quiet)
            self.quiet.refused = None
        text = describe(exc, self.settings) if exc else "unknown"
        wait = state.next_action.sleep if state.next_action else 0.0
        if text != self.last:
            self.last = text
            log.warning("cannot connect yet: %s (retrying, next in %.2fs)", text, wait)
        else:
            log.debug(
                "cannot connect yet: %s (attempt %d, next in %.2fs)",
                text,
                state.attempt_number,
                wait,
            )
