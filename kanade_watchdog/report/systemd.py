"""systemd as an observer of the daemon: READY, STATUS, WATCHDOG, RELOADING,
STOPPING, EXTEND_TIMEOUT_USEC. A no-op outside systemd.

`SystemdReporter` holds the policy: READY=1 only once every declared
resource exists (and, after a reload, once a pass ran on the new config),
STATUS= from the `status.StatusBoard`, watchdog pings only while the
daemon's `health()` says the worker makes progress, and a start timeout
extended until READY. `Notifier` only knows the protocol (sd_notify(3)):
one datagram per message to the AF_UNIX socket named by NOTIFY_SOCKET. It
is sent here without blocking, not through libsystemd: its sd_notify blocks
(holding the interpreter lock, so every thread stops) once the receiver has
ten datagrams queued, and a service manager that stops reading must not
freeze the daemon. The watchdog period comes from WATCHDOG_USEC (for our
PID), pinged at half of it. The sender is injectable; tests also bind a
real NOTIFY_SOCKET. Notifications are never fatal: a socket that cannot be
reached or takes nothing more (wrong path, systemd restarted or stuck, a
test harness gone) is logged once per change of reason, and the daemon
goes on doing its job without it; only a socket that cannot be reached
at start is an ERROR, since systemd will then never see READY=1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kanade_watchdog.core.ports import Quiet
from kanade_watchdog.core.reports import BrokerState, PassReport, Reloaded, RunState
from kanade_watchdog.model.consumers import Consumer
from kanade_watchdog.model.events import Event
from kanade_watchdog.model.resources import Resource
from kanade_watchdog.report.logs import fields
from kanade_watchdog.report.status import StatusBoard

log = logging.getLogger("kanade_watchdog.notify")


FULL_QUEUE_WAIT = 0.05  # how long one message may wait for room in the receiver's queue


class DatagramSender:
    """sd_notify without blocking. A full queue (ten datagrams by default, 512
    under systemd's sysctl) gets FULL_QUEUE_WAIT to drain; a receiver that
    has stopped reading gets no wait at all until it reads again."""

    def __init__(self) -> None:
        self.stuck = False

    def __call__(self, text: str) -> bool:
        address = os.environ.get("NOTIFY_SOCKET", "")
        if not address:
            return False
        if address.startswith("@"):  # the abstract namespace
            address = "\0" + address[1:]
        elif not address.startswith("/"):
            raise OSError(f"unsupported NOTIFY_SOCKET address {address!r}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.connect(address)
            try:
                sock.send(text.encode())
            except BlockingIOError:
                if self.stuck:
                    raise
                # A connected datagram socket polls writable once the peer's queue has room.
                select.select([], [sock], [], FULL_QUEUE_WAIT)
                self.stuck = True
                sock.send(text.encode())
        self.stuck = False
        return True


class Notifier:
    def __init__(self, send: Callable[[str], bool] | None = None) -> None:
        self._send = send or DatagramSender()
        self._last_status = ""
        self.ready_sent = False
        self.failing = ""  # why the last notification could not be sent ("" when it was)
        self._ready_lost = False  # READY=1 could not be delivered: it rides on the next one

    def _notify(self, text: str) -> bool:
        if self._ready_lost and not text.startswith(("READY=1", "STOPPING=1")):
            text = f"READY=1\n{text}"
        try:
            self._send(text)
        except Exception as exc:  # whatever the socket does, the daemon goes on
            reason = _reason(exc)
            if reason != self.failing:
                self.failing = reason
                log.warning(
                    "cannot notify systemd through NOTIFY_SOCKET=%s: %s; carrying on without "
                    "it (logged again only if this changes)",
                    os.environ.get("NOTIFY_SOCKET", ""),
                    reason,
                )
            if text.startswith("READY=1"):
                self._ready_lost = True
            return False
        self._ready_lost = False
        if self.failing:
            self.failing = ""
            log.info("systemd notifications are delivered again")
        return True

    def hello(self) -> bool:
        """The first message, at start. With NOTIFY_SOCKET set and no way to
        reach it, say so loudly: systemd will never see READY=1 (a Type=notify
        start times out) nor a watchdog ping. False when it could not be sent."""
        address = os.environ.get("NOTIFY_SOCKET", "")
        if not address:
            return False
        try:
            self._send("STATUS=starting")
        except Exception as exc:  # whatever the socket does, the daemon goes on
            self.failing = _reason(exc)
            log.error(  # noqa: TRY400 - one line; the reason is the whole story
                "cannot notify systemd through NOTIFY_SOCKET=%s: %s; systemd will not see "
                "READY=1 or the watchdog pings (carrying on; logged again only if this changes)",
                address,
                self.failing,
            )
            return False
        self._last_status = "starting"
        return True

    def status(self, text: str) -> None:
        if text != self._last_status:  # STATUS is cheap but a datagram per pass is noise
            self._last_status = text
            if not self._notify(f"STATUS={text}"):
                self._last_status = ""  # lost: say it again next time

    def ready(self, status: str) -> None:
        self.ready_sent = True
        self._last_status = status
        if not self._notify(f"READY=1\nSTATUS={status}"):
            self._last_status = ""

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd (253+) tell this reload from a later one.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._last_status = "reloading"
        self._notify(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading")

    def stopping(self) -> None:
        self._notify("STOPPING=1\nSTATUS=stopping")

    def watchdog(self) -> None:
        self._notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        self._notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")


def _reason(exc: Exception) -> str:
    """`ConnectionRefusedError: Connection refused`, without the errno noise."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def watchdog_period() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2


@dataclass(frozen=True)
class Health:
    """Whether the worker makes progress: the rule behind the watchdog ping
    (and the HTTP /healthz)."""

    ok: bool
    stuck_for: float  # seconds the pass in flight has run (0 when idle)
    limit: float  # how long a pass may run before the daemon counts as wedged


EXTEND_EVERY = 10.0  # while starting: ask systemd for more time, this often


class SystemdReporter(Quiet):
    """The READY policy, STATUS=, the watchdog pings and the start timeout. A
    `ports.Reporter` placed after the `StatusBoard` it reads: STATUS= is
    rendered once per pass and once per connection change."""

    def __init__(self, notifier: Notifier, board: StatusBoard) -> None:
        self.notifier = notifier
        self.board = board
        self._ready_after: int | None = None  # after a reload: READY once a pass on it ran

    @property
    def ready_sent(self) -> bool:
        return self.notifier.ready_sent

    # --- what the reporters' protocol brings --------------------------------------

    def run_state(self, state: RunState) -> None:
        if state is RunState.STARTING:
            self.notifier.hello()
        elif state is RunState.RELOADING and self.notifier.ready_sent:
            self.notifier.reloading()
        elif state is RunState.STOPPING:
            self.notifier.stopping()

    def declared(self, resources: Sequence[Resource], consumers: Sequence[Consumer] = ()) -> None:
        if self.board.last_pass is not None:  # at start there is nothing to say yet
            self._refresh()

    def broker(self, state: BrokerState) -> None:
        self._refresh()

    def pass_done(self, report: PassReport) -> None:
        self._refresh()

    def reloaded(self, result: Reloaded) -> None:
        """Before the first READY=1 nothing is said (READY must keep meaning
        "every declared resource exists"); after it, READY=1 ends the reload:
        at once when the file was refused or no pass can run (broker away),
        else once a pass on the new config ran."""
        if not self.notifier.ready_sent:
            return
        if result.ok and result.connected:
            self._ready_after = result.generation
        else:
            self.notifier.ready(self.board.line())

    def _refresh(self) -> None:
        """READY=1 when it is time, else STATUS=."""
        line = self.board.line()
        if not self.notifier.ready_sent:
            if self.board.all_present() and self.board.last_pass is not None:
                self.notifier.ready(line)
                log.info(
                    "ready: %s", line, extra=fields(action=Event.READY, message_id=Event.READY)
                )
                return
            if not self.board.broker_text:
                missing = self.board.missing()
                shown = ", ".join(missing[:3]) + (
                    f" +{len(missing) - 3} more" if len(missing) > 3 else ""
                )
                after = f" ({line})" if self.board.last_pass is not None else ""
                line = f"waiting for {len(missing)} resource(s): {shown}{after}"
        elif self._ready_after is not None and self.board.last_pass_generation >= (
            self._ready_after
        ):
            self._ready_after = None
            self.notifier.ready(line)
            return
        self.notifier.status(line)

    # --- tasks the daemon runs ----------------------------------------------------

    async def keep_alive(self, period: float, health: Callable[[], Health]) -> None:
        """Ping every `period` while `health()` is ok. A broker that is down is
        not a wedge: the worker then waits idle, and requests have timeouts."""
        withheld = False
        while True:
            now = health()
            if now.ok:
                self.notifier.watchdog()
                withheld = False
            elif not withheld:
                withheld = True
                log.error(
                    "worker stuck in one pass for %.0fs (limit %.0fs); withholding watchdog "
                    "pings so systemd restarts the daemon",
                    now.stuck_for,
                    now.limit,
                )
            await asyncio.sleep(period)

    async def extend_start(self) -> None:
        """Until READY, keep systemd's start timeout from killing a start that
        is waiting for the broker (it stays 'activating' with a STATUS line)."""
        while not self.notifier.ready_sent:
            self.notifier.extend_timeout(EXTEND_EVERY * 3)
            await asyncio.sleep(EXTEND_EVERY)
