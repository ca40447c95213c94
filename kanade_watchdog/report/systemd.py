"""systemd notifications: READY, STATUS, WATCHDOG, RELOADING, STOPPING,
EXTEND_TIMEOUT_USEC. A no-op outside systemd.

`daemon` decides when; this module only knows the protocol (sd_notify(3)):
one datagram per message to the AF_UNIX socket named by NOTIFY_SOCKET. It
is sent here without blocking, not through libsystemd: its sd_notify blocks
(holding the interpreter lock, so every thread stops) once the receiver has
ten datagrams queued, and a service manager that stops reading must not
freeze the daemon. The watchdog period comes from WATCHDOG_USEC (for our
PID), pinged at half of it. The sender is injectable; tests also bind a
real NOTIFY_SOCKET. Notifications are never fatal: a socket that cannot be
reached or takes nothing more (wrong path, systemd restarted or stuck, a
test harness gone) is logged once per change of reason, and the daemon
goes on doing its job without it.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
from collections.abc import Callable

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
