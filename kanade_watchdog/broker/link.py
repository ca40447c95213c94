"""The daemon's one live NATS connection, and the advisories it carries.

`Link.run()` keeps exactly one nats-py client for as long as it runs:
it connects (`forever.connect_forever`: connection errors are retried
forever, anything else is a bug and propagates), subscribes to the stream
advisories when `advisories` is on, and builds a new client if nats-py
ever closes its own for good. `reconfigure()` applies a reload's [nats]
and advisory settings to the live connection; `close()` ends it at
shutdown. The daemon hears of it all through plain callbacks, so nothing
above this layer touches nats-py:

    on_connecting(servers)   a new client is being connected
    on_connected(Connected)  a client is up (a new one, or nats-py's own reconnect)
    on_lost()                the connection is gone; requests in flight are lost
    on_advisory(subject, payload)   a message on the advisory subjects, unparsed
    on_error(text)           a problem worth an operator's line (a denied subscription)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from kanade_watchdog.broker.aio import bounded
from kanade_watchdog.broker.api import Broker
from kanade_watchdog.broker.forever import connect_forever
from kanade_watchdog.core import ports
from kanade_watchdog.model.settings import NatsSettings

log = logging.getLogger("kanade_watchdog.connection")

ADVISORY_SUBJECT = "$JS.EVENT.ADVISORY.STREAM.*.*"
CONSUMER_ADVISORY_SUBJECT = "$JS.EVENT.ADVISORY.CONSUMER.*.*.*"
CLOSE_TIMEOUT = 2.0  # closing at shutdown is best effort, within this
REBUILD_PAUSE = 1.0  # never a tight loop, whatever closed the client
# Readiness: a broker that accepts connections may not answer JetStream
# requests yet (it is still recovering its streams), and a stream list sent
# then waits out its whole timeout. So a connection is announced (and the
# full pass runs) once a short `$JS.API.INFO` request is answered: each try
# waits PROBE_TIMEOUT, "no responders" is tried again after PROBE_PAUSE,
# and after READY_WAIT the connection is announced all the same (the pass
# then says what is wrong).
PROBE_TIMEOUT = 0.25
PROBE_PAUSE = 0.01
READY_WAIT = 10.0


@dataclass(frozen=True)
class Connected:
    """A connection that is up, as the daemon needs to know it."""

    broker: ports.Broker
    url: str  # host:port of the server it reached
    server_version: str  # "" when the server did not say
    first: bool  # the first connection since the process started
    resumed: bool  # nats-py reconnected the same client (else a new client)


class Link:
    def __init__(
        self,
        settings: NatsSettings,
        *,
        advisories: bool,
        on_connecting: Callable[[str], None],
        on_connected: Callable[[Connected], None],
        on_lost: Callable[[], None],
        on_advisory: Callable[[str, bytes], None],
        on_error: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.advisories = advisories
        self._on_connecting = on_connecting
        self._on_connected = on_connected
        self._on_lost = on_lost
        self._on_advisory = on_advisory
        self._on_error = on_error
        self._nc: Client | None = None
        self._broker: Broker | None = None
        self._sub: Subscription | None = None
        self._consumer_sub: Subscription | None = None
        # Subscribed only when consumers are declared, so a grant without the
        # consumer advisories is no problem to a declaration without consumers.
        self.consumer_advisories = False
        self._connecting: asyncio.Future[Client] | None = None
        self._rebuild = False  # the next close (or cancelled attempt) is ours: start over
        self._closing = False
        self._denied_advisories = False
        self._connected_once = False
        self._background: set[asyncio.Task[None]] = set()
        self._probing: asyncio.Task[None] | None = None  # readiness after a reconnect

    @property
    def servers(self) -> str:
        return ", ".join(self.settings.servers)

    # --- the connection's life ----------------------------------------------------------

    async def run(self) -> None:
        """Keep exactly one live client until cancelled."""
        while True:
            self._on_connecting(self.servers)  # a reload may have changed them
            closed = asyncio.Event()

            async def on_closed(closed: asyncio.Event = closed) -> None:
                closed.set()

            self._connecting = asyncio.ensure_future(
                connect_forever(
                    self.settings,
                    on_closed=on_closed,
                    on_disconnect=self._disconnected,
                    on_reconnect=self._reconnected,
                    on_error=self._client_error,
                )
            )
            try:
                nc = await self._connecting
            except asyncio.CancelledError:
                if not self._rebuild:  # shutdown
                    raise
                self._rebuild = False  # a reload brought new settings: start over
                continue
            self._nc = nc
            self._broker = Broker(
                nc, timeout=self.settings.request_timeout, domain=self.settings.jetstream_domain
            )
            self._sub = self._consumer_sub = None
            await self._subscribe(nc)
            await jetstream_ready(nc, self._broker.prefix)
            self._up(resumed=False)
            await closed.wait()
            self._on_lost()
            if self._rebuild:  # a reload asked for it
                self._rebuild = False
                continue
            await asyncio.sleep(REBUILD_PAUSE)
            log.warning("connection closed for good; building a new one")

    def _up(self, *, resumed: bool) -> None:
        nc, broker = self._nc, self._broker
        assert nc is not None
        assert broker is not None
        first = not self._connected_once
        self._connected_once = True
        url = nc.connected_url.netloc if nc.connected_url else self.servers
        # nats-py keeps the server's INFO only in a private field.
        version = str(nc._server_info.get("version", "") or "")
        self._on_connected(
            Connected(broker, url, server_version=version, first=first, resumed=resumed)
        )

    async def _disconnected(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
        if not self._closing:
            self._on_lost()

    async def _reconnected(self) -> None:
        """nats-py awaits this in its reconnect loop: readiness is learnt
        beside it, and the connection announced once JetStream answers."""
        if self._closing or self._nc is None or self._broker is None:
            return
        if self._probing is not None:
            self._probing.cancel()
        nc, prefix = self._nc, self._broker.prefix

        async def ready_then_up() -> None:
            await jetstream_ready(nc, prefix)
            if not self._closing and nc is self._nc and nc.is_connected:
                self._up(resumed=True)

        self._probing = asyncio.get_running_loop().create_task(ready_then_up())
        self._background.add(self._probing)
        self._probing.add_done_callback(self._background.discard)

    def _client_error(self, text: str) -> None:
        """The client's asynchronous errors: a denied publish or subscription is
        reported this way, and our requests on that subject then only time out."""
        if self._broker is None:
            return
        violation = self._broker.note_error(text)
        if violation is None or violation[0] != "subscription":
            return
        if violation[1].lower() == ADVISORY_SUBJECT.lower() and not self._denied_advisories:
            self._denied_advisories = True
            self._on_error(
                f"permission denied: subscribe to {ADVISORY_SUBJECT}; deletes and drift now "
                "heal only at the next resync (grant it in the user's subscribe permissions)"
            )

    # --- advisories ---------------------------------------------------------------------

    async def _advisory(self, msg: Msg) -> None:
        self._on_advisory(msg.subject, msg.data)

    async def _subscribe(self, nc: Client) -> None:
        """Subscribe or unsubscribe to match `advisories`."""
        if self.advisories and self._sub is None:
            self._sub = await nc.subscribe(ADVISORY_SUBJECT, cb=self._advisory)
        elif not self.advisories and self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):  # the subscription dies with its client anyway
                await sub.unsubscribe()
        if self.advisories and self.consumer_advisories and self._consumer_sub is None:
            self._consumer_sub = await nc.subscribe(CONSUMER_ADVISORY_SUBJECT, cb=self._advisory)

    # --- reload and shutdown ------------------------------------------------------------

    def reconfigure(self, settings: NatsSettings, *, advisories: bool) -> None:
        """A reload's settings: a new connection when [nats] changed (or while
        still connecting, since the files it names may be what changed), else
        the advisory subscription brought in line."""
        old, self.settings = self.settings, settings
        self.advisories = advisories
        nc = self._nc
        if settings != old and nc is not None and not nc.is_closed:
            log.info("connection settings changed; reconnecting with the new ones")
            self._rebuild = True
            self._spawn(nc.close())
        elif self._connecting is not None and not self._connecting.done():
            log.info("reloaded while connecting; starting a new connection attempt")
            self._rebuild = True
            self._connecting.cancel()
        elif nc is not None and not nc.is_closed:
            self._spawn(self._subscribe(nc))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Close the client, bounded; losing it is no longer reported."""
        self._closing = True
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        try:
            await bounded(nc.close(), CLOSE_TIMEOUT, what="closing the connection")
        except asyncio.CancelledError:
            # nats-py's close races a broker going away at the same moment
            # (Ctrl-C in `make run` stops both) and can surface as a
            # cancellation; only a cancellation of this task is ours to pass on.
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                raise
        except Exception:  # closing is best effort at exit
            log.debug("closing the connection failed", exc_info=True)


async def jetstream_ready(
    nc: Client,
    prefix: str,
    *,
    within: float = READY_WAIT,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Until JetStream answers a short INFO request (any answer, an error
    included: it is up and speaking), for at most `within` seconds; True
    if it answered. Tries that find no responder are repeated after a brief
    pause, silent ones at once: no one slow request holds the pass."""
    give_up = clock() + within
    while clock() < give_up:
        if not nc.is_connected:
            return False
        try:
            await nc.request(f"{prefix}.INFO", b"", timeout=PROBE_TIMEOUT)
        except nats.errors.NoRespondersError:
            await asyncio.sleep(PROBE_PAUSE)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        except nats.errors.Error:
            return False  # the connection went: the reconnect probes again
        else:
            return True
    return False
