"""systemd notifications through systemd-python: READY, STATUS, WATCHDOG,
RELOADING, STOPPING, EXTEND_TIMEOUT_USEC. A no-op outside systemd.

`daemon` decides when; this module only knows the protocol (sd_notify(3)).
The watchdog period comes from WATCHDOG_USEC (for our PID), pinged at half
of it. The sender is injectable; tests also bind a real NOTIFY_SOCKET.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

try:  # systemd-python is a Linux-only dependency
    from systemd import daemon as _sd_daemon
except ImportError:  # pragma: no cover - exercised only off Linux
    _sd_daemon = None


def _default_send(text: str) -> bool:
    if _sd_daemon is None or not os.environ.get("NOTIFY_SOCKET"):
        return False
    return bool(_sd_daemon.notify(text))


class Notifier:
    def __init__(self, send: Callable[[str], bool] = _default_send) -> None:
        self._send = send
        self._last_status = ""
        self.ready_sent = False

    def status(self, text: str) -> None:
        if text != self._last_status:  # STATUS is cheap but a datagram per pass is noise
            self._last_status = text
            self._send(f"STATUS={text}")

    def ready(self, status: str) -> None:
        self.ready_sent = True
        self._last_status = status
        self._send(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd (253+) tell this reload from a later one.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._last_status = "reloading"
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")


def watchdog_period() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2
