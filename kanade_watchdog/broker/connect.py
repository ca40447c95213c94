"""Building the NATS connection: fail fast for commands, never give up for the daemon.

nats-py's defaults suit neither: its initial connect retries for ~2 minutes
whatever `allow_reconnect` says, and after ~60 failed reconnects it closes
for good. One-shot commands cap the attempts so "broker unreachable" comes
back within seconds; the daemon reconnects forever. Either way the default
error callback (a traceback per attempt) is replaced by quiet, rate-limited
logging. The one-shot commands call `connect_once`; `link` (the daemon's
connection) calls `forever.connect_forever`, which keeps tenacity off the
one-shot commands' start-up. Only connection errors count as "cannot
connect": any other exception is a bug and propagates.

Every attempt is bounded end to end, the closing of a failed one included:
nats-py's close after a failed TLS handshake waits forever for a socket
that is already gone, so a close that does not finish in time is abandoned
(`aio.bounded`), never awaited by the daemon.
"""

from __future__ import annotations

import logging
import random
import re
import ssl
import time
from collections.abc import Callable
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client, Server

from kanade_watchdog.broker.aio import bounded, in_background
from kanade_watchdog.broker.security import auth_options
from kanade_watchdog.model.errors import BrokerUnavailable
from kanade_watchdog.model.settings import NatsSettings

log = logging.getLogger("kanade_watchdog.connection")


# What a connection attempt may fail with while the broker is away, refuses
# us or cannot be verified: nats-py's own list when it decides to try the
# next server (sockets and TLS are OSErrors; auth and protocol errors are
# nats.errors.Error). Anything else is a bug here or in the client, and is
# raised instead of retried, so the daemon exits 70 rather than "waiting".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, nats.errors.Error)

CLOSE_TIMEOUT = 2.0  # a failed attempt's client gets this long to close, then is abandoned
ATTEMPT_MARGIN = 1.0  # on top of the steps nats-py bounds itself (see attempt_timeout)


def close_in_background(nc: Client) -> None:
    """Close a client that will not be used, bounded, without waiting for it."""
    if nc.is_closed:
        return
    in_background(bounded(nc.close(), CLOSE_TIMEOUT, what="closing"))


def attempt_timeout(settings: NatsSettings) -> float:
    """The longest one attempt over the pool may legitimately take: per server
    two tries (nats-py's max_reconnect_attempts=1), each a TCP connect, the
    INFO line, the TLS handshake and the PONG (each within connect_timeout),
    with a reconnect_wait pause between tries."""
    per_try = 4 * settings.connect_timeout + settings.reconnect_wait
    return len(settings.servers) * 2 * per_try + ATTEMPT_MARGIN


class QuietErrors:
    """The client's error callback: one line per distinct error per interval."""

    def __init__(
        self, *, interval: float = 60.0, sink: Callable[[str], object] | None = None
    ) -> None:
        self.interval = interval
        self.sink = sink
        self._last: dict[str, float] = {}
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
            return
        self._last[text] = now
        log.debug("nats client: %s", text)


MAX_RECONNECT_WAIT = 5.0  # reconnect pacing cap: a restarting broker is back in seconds
# While the port is closed (the connect refused at once), a try costs the
# broker nothing: its host refuses a TCP connect. Those are retried at a
# fixed short pace however long the outage, so a broker that comes back is
# found within milliseconds. Any other failure (a server that answers and
# refuses us, a handshake that stalls, a host that does not answer) keeps
# the slow growing pace. nats-py's own reconnect loop makes a whole attempt
# each time, at the floor's pace; the first connect knocks instead
# (`forever.until_a_port_accepts`).
PORT_PACE = 0.02


def port_closed(exc: BaseException | None) -> bool:
    """The last attempt found nothing listening: refused at the TCP connect."""
    return isinstance(exc, ConnectionRefusedError)


def reconnect_pacing(
    base: float, quiet: QuietErrors | None = None
) -> Callable[[list[Server], dict[str, Any]], tuple[Server, float]]:
    """nats-py's reconnect hook: the least-tried server, after a delay that grows
    with the failed attempts (x1.5 each, capped), so a broker that refuses us
    (credentials revoked, a stuck TLS handshake) is not hammered; at the
    port pace while its port is closed (`quiet` saw the refusal), and the
    first try after a lost connection at once."""

    def pick(servers: list[Server], _info: dict[str, Any]) -> tuple[Server, float]:
        server = min(servers, key=lambda s: s.reconnects)
        if server.reconnects == 0 or (quiet is not None and port_closed(quiet.latest)):
            return server, PORT_PACE
        # The exponent is bounded: 1.5**1752 overflows a float, and a long
        # outage at the port pace counts that many attempts in minutes.
        delay = min(base * 1.5 ** min(server.reconnects, 60), MAX_RECONNECT_WAIT)
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


async def attempt(settings: NatsSettings, **options: Any) -> Client:
    """One bounded connect over the pool. nats-py is told not to reconnect
    during it (so a failed handshake raises at once instead of closing and
    hanging); a failed client is closed in the background."""
    nc = Client()
    try:
        await bounded(
            nc.connect(**{**_options(settings), "allow_reconnect": False, **options}),
            attempt_timeout(settings),
            what="connect attempt",
        )
    except BaseException:
        close_in_background(nc)
        raise
    return nc


async def connect_once(
    settings: NatsSettings, *, on_error: Callable[[str], object] | None = None
) -> Client:
    """For one-shot commands: one try per server, then BrokerUnavailable."""
    quiet = QuietErrors(sink=on_error)
    try:
        return await attempt(settings, max_reconnect_attempts=1, error_cb=quiet.callback)
    except CONNECTION_ERRORS as exc:
        raise BrokerUnavailable(
            f"cannot connect to {', '.join(settings.servers)}: "
            f"{describe(reason(exc, quiet), settings)}"
        ) from exc


def reason(exc: BaseException, quiet: QuietErrors) -> BaseException:
    """The error worth showing: "no servers" and our own time limit hide the
    reason each server gave, which the error callback saw."""
    if isinstance(exc, nats.errors.NoServersError | TimeoutError):
        return quiet.refused or quiet.latest or exc
    return exc


_DROPPED = ("connection reset", "connection lost", "unexpected eof", "broken pipe")
_SSL_NOISE = re.compile(r"^\[SSL(?:: [A-Z0-9_]+)?\]\s*|\s*\(_ssl\.c:\d+\)$")


def describe(exc: BaseException, settings: NatsSettings | None = None) -> str:
    """nats-py's exceptions often have no text; the class name then says it."""
    text = str(exc)
    if isinstance(exc, nats.errors.AuthorizationError) or "authorization" in text.lower():
        return "authorization refused (check the credentials in [nats])"
    tls = settings.tls if settings is not None else None
    if isinstance(exc, ssl.SSLError):
        # "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: ... (_ssl.c:1006)"
        text = f"TLS handshake failed: {_SSL_NOISE.sub('', text) or type(exc).__name__}"
        if settings is not None and tls is None:
            text += " (the broker requires TLS: set [nats.tls] ca_file to its CA)"
        elif tls is not None and not tls.cert_file and "certificate required" in text.lower():
            # TLS 1.3 reports a missing client certificate as an alert.
            text += (
                " (the broker requires a client certificate: set [nats.tls] cert_file and key_file)"
            )
        return text
    text = text or type(exc).__name__
    if tls is not None and not tls.cert_file and any(d in text.lower() for d in _DROPPED):
        # A broker that requires mutual TLS drops the session without a word.
        text += (
            " (if the broker requires a client certificate, set [nats.tls] cert_file and key_file)"
        )
    return text
