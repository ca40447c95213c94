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
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client, Server
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from .config import NatsSettings
from .errors import BrokerUnavailable
from .security import auth_options

log = logging.getLogger("kanade_watchdog.connection")

Callback = Callable[[], Awaitable[None]]


class QuietErrors:
    """The client's error callback: one line per distinct error per interval."""

    def __init__(
        self, *, interval: float = 60.0, sink: Callable[[str], object] | None = None
    ) -> None:
        self.interval = interval
        self.sink = sink
        self._last: dict[str, float] = {}
        self.suppressed = 0
        self.latest: Exception | None = None  # why the last attempt failed
        self.refused: Exception | None = None  # an authorization refusal since the last look

    async def callback(self, exc: Exception) -> None:
        self.latest = exc
        if "authorization" in str(exc).lower() or isinstance(exc, nats.errors.AuthorizationError):
            self.refused = exc  # the socket reset that follows must not hide it
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


MAX_RECONNECT_WAIT = 5.0  # reconnect pacing cap: a restarting broker is back in seconds
MAX_CONNECT_WAIT = 30.0  # initial-connect pacing cap (a down broker, wrong credentials)


def reconnect_pacing(base: float) -> Callable[[list[Server], dict[str, Any]], tuple[Server, float]]:
    """nats-py's reconnect hook: the least-tried server, after a delay that grows
    with the failed attempts (x1.5 each, capped), so a broker that refuses us
    (credentials revoked, a stuck TLS handshake) is not hammered."""

    def pick(servers: list[Server], _info: dict[str, Any]) -> tuple[Server, float]:
        server = min(servers, key=lambda s: s.reconnects)
        delay = min(base * 1.5**server.reconnects, MAX_RECONNECT_WAIT)
        return server, delay * random.uniform(0.8, 1.2)

    return pick


def _options(settings: NatsSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "servers": list(settings.servers),
        "name": settings.name,
        "connect_timeout": settings.connect_timeout,
        "reconnect_time_wait": settings.reconnect_wait,
        # Pings find a dead peer that never closed the socket (a stalled path).
        "ping_interval": 5,
        "max_outstanding_pings": 3,
    }
    options.update(auth_options(settings))
    return options


async def connect_once(
    settings: NatsSettings, *, on_error: Callable[[str], object] | None = None
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
            f"cannot connect to {', '.join(settings.servers)}: {describe(exc, settings)}"
        ) from exc


_DROPPED = ("connection reset", "connection lost", "unexpected eof", "broken pipe")


def describe(exc: BaseException, settings: NatsSettings | None = None) -> str:
    """nats-py's exceptions often have no text; the class name then says it."""
    text = str(exc)
    if isinstance(exc, nats.errors.AuthorizationError) or "authorization" in text.lower():
        return "authorization refused (check the credentials in [nats])"
    text = text or type(exc).__name__
    tls = settings.tls if settings is not None else None
    if tls is not None and not tls.cert_file and any(d in text.lower() for d in _DROPPED):
        # A broker that requires mutual TLS drops the session without a word.
        text += (
            " (if the broker requires a client certificate, set [nats.tls] cert_file and key_file)"
        )
    return text


async def connect_forever(
    settings: NatsSettings,
    *,
    on_closed: Callback,
    on_disconnect: Callback,
    on_reconnect: Callback,
    on_error: Callable[[str], object] | None = None,
) -> Client:
    """For the daemon: returns once a server accepts us, trying with growing
    pauses meanwhile; the client then reconnects forever on its own.
    Cancel the awaiting task to give up (shutdown)."""
    quiet = QuietErrors(sink=on_error)
    retrying = AsyncRetrying(
        wait=wait_exponential_jitter(
            multiplier=settings.reconnect_wait, max=MAX_CONNECT_WAIT, jitter=settings.reconnect_wait
        ),
        retry=retry_if_exception_type(Exception),
        before_sleep=_RetryLog(quiet, settings).before_sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            nc = await nats.connect(
                **_options(settings),
                allow_reconnect=True,
                # One pass over the pool per attempt; tenacity paces the attempts.
                max_reconnect_attempts=1,
                reconnect_to_server_handler=reconnect_pacing(settings.reconnect_wait),
                error_cb=quiet.callback,
                closed_cb=on_closed,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            )
    # Once connected, never stop reconnecting: the pacing hook spaces attempts.
    nc.options["max_reconnect_attempts"] = -1
    return nc


class _RetryLog:
    """One line per distinct reason the broker cannot be reached, not one per attempt."""

    def __init__(self, quiet: QuietErrors, settings: NatsSettings) -> None:
        self.quiet = quiet
        self.settings = settings
        self.last = ""

    def before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, nats.errors.NoServersError):
            # "no servers" hides the reason each one gave
            exc = self.quiet.refused or self.quiet.latest or exc
            self.quiet.refused = None
        text = describe(exc, self.settings) if exc else "unknown"
        wait = state.next_action.sleep if state.next_action else 0.0
        if text != self.last:
            self.last = text
            log.warning("cannot connect yet: %s (retrying, next in %.1fs)", text, wait)
        else:
            log.debug(
                "cannot connect yet: %s (attempt %d, next in %.1fs)",
                text,
                state.attempt_number,
                wait,
            )
