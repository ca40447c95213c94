"""Building the NATS connection: fail fast for commands, never give up for the daemon.

nats-py's defaults suit neither: its initial connect retries for ~2 minutes
whatever `allow_reconnect` says, and after ~60 failed reconnects it closes
for good. One-shot commands cap the attempts so "broker unreachable" comes
back within seconds; the daemon reconnects forever. Either way the default
error callback (a traceback per attempt) is replaced by quiet, rate-limited
logging. `cli` and `daemon` call `connect_once` / `connect_forever`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client

from .config import NatsSettings
from .errors import BrokerUnavailable

log = logging.getLogger("kanade_watchdog.connection")

Callback = Callable[[], Awaitable[None]]


class QuietErrors:
    """The client's error callback: one line per distinct error per interval."""

    def __init__(
        self, *, interval: float = 60.0, sink: Callable[[str], None] | None = None
    ) -> None:
        self.interval = interval
        self.sink = sink
        self._last: dict[str, float] = {}
        self.suppressed = 0

    async def callback(self, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        if self.sink is not None:
            self.sink(text)
        now = time.monotonic()
        last = self._last.get(text)
        if last is not None and now - last < self.interval:
            self.suppressed += 1
            return
        self._last[text] = now
        log.debug("nats client: %s", text)


def _options(settings: NatsSettings) -> dict[str, Any]:
    return {
        "servers": list(settings.servers),
        "name": settings.name,
        "connect_timeout": settings.connect_timeout,
        "reconnect_time_wait": settings.reconnect_wait,
        # Pings find a dead peer that never closed the socket (a stalled path).
        "ping_interval": 5,
        "max_outstanding_pings": 3,
    }


async def connect_once(
    settings: NatsSettings, *, on_error: Callable[[str], None] | None = None
) -> Client:
    """For one-shot commands: one try per server, then BrokerUnavailable."""
    try:
        return await nats.connect(
            **_options(settings),
            allow_reconnect=False,
            max_reconnect_attempts=1,
            error_cb=QuietErrors(sink=on_error).callback,
        )
    except Exception as exc:  # nats-py raises OSError, NoServersError, auth errors...
        raise BrokerUnavailable(
            f"cannot connect to {', '.join(settings.servers)}: {str(exc) or type(exc).__name__}"
        ) from exc


async def connect_forever(
    settings: NatsSettings,
    *,
    on_closed: Callback,
    on_disconnect: Callback,
    on_reconnect: Callback,
    on_error: Callable[[str], None] | None = None,
) -> Client:
    """For the daemon: blocks until a server answers, then reconnects forever.
    Cancel the awaiting task to give up (shutdown)."""
    return await nats.connect(
        **_options(settings),
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        error_cb=QuietErrors(sink=on_error).callback,
        closed_cb=on_closed,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
