"""The daemon as systemd runs it, without systemd: a real `kanade-watchdog run`
subprocess with NOTIFY_SOCKET pointing at an AF_UNIX datagram socket bound in
a temp dir (what python-systemd's own tests do), WATCHDOG_USEC set, real
signals, and its JSON log lines read back from a file.

Used by `test_notify` and `test_journal` (`daemonproc` serves `test_daemon`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import REPO

POLL = 0.02


@dataclass(frozen=True)
class Datagram:
    """One sd_notify message as received, with its arrival time (monotonic)."""

    at: float
    text: str
    fields: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, at: float, data: bytes) -> Datagram:
        text = data.decode()
        pairs = (line.partition("=") for line in text.splitlines() if line)
        return cls(at, text, {k: v for k, _, v in pairs})


class NotifySocket:
    """The service manager's end of sd_notify: collects every datagram."""

    def __init__(self) -> None:
        # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer.
        self.dir = Path(tempfile.mkdtemp(prefix="kwd-notify-"))
        self.path = self.dir / "notify"
        self.sock = self._bind()
        self.received: list[Datagram] = []

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.path))
        sock.setblocking(False)
        return sock

    def refuse(self) -> None:
        """Stop listening but leave the path: senders get ConnectionRefusedError
        (what a restarted or gone service manager looks like)."""
        self.drain()
        self.sock.close()

    def rebind(self) -> None:
        """Listen on the same path again, with a fresh socket."""
        self.path.unlink(missing_ok=True)
        self.sock = self._bind()

    def drain(self) -> list[Datagram]:
        if self.sock.fileno() < 0:  # not listening (refuse)
            return self.received
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.received
            self.received.append(Datagram.parse(time.monotonic(), data))

    def having(self, key: str, *, since: int = 0) -> list[Datagram]:
        return [d for d in self.drain()[since:] if key in d.fields]

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class NotifiedDaemon:
    """`python -m kanade_watchdog run` with a notify socket; JSON logs to a file."""

    def __init__(
        self,
        config: Path,
        workdir: Path,
        *,
        watchdog_usec: int | None = None,
        log_format: str = "json",
        env: dict[str, str] | None = None,
        wrapper: Sequence[str] = (),
        notify_path: str | None = None,
    ) -> None:
        self.config = config
        self.notify = NotifySocket()
        self.stderr_path = workdir / "daemon.stderr"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")
        }
        # `notify_path` points the daemon somewhere else (nothing listening there).
        self.env["NOTIFY_SOCKET"] = notify_path or str(self.notify.path)
        if watchdog_usec is not None:
            self.env["WATCHDOG_USEC"] = str(watchdog_usec)
        self.env.update(env or {})
        self.argv = [
            *wrapper,
            sys.executable,
            "-m",
            "kanade_watchdog",
            "run",
            "--config",
            str(config),
            "--log-format",
            log_format,
            "--log-level",
            "debug",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> NotifiedDaemon:
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=self.env,
                cwd=REPO,
                start_new_session=True,  # a test's Ctrl-C must not reach it first
            )
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def exited(self) -> int | None:
        assert self.proc is not None
        return self.proc.poll()

    async def wait_exit(self, within: float) -> int:
        deadline = time.monotonic() + within
        while (code := self.exited()) is None:
            assert time.monotonic() < deadline, f"daemon still running after {within}s"
            await asyncio.sleep(POLL)
        return code

    def stop(self) -> None:
        """Finalizer: whatever state the test left, the process is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()

    # --- what it said ---------------------------------------------------------------

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """Its JSON log lines (--log-format json), parsed."""
        out = []
        for line in self.stderr().splitlines():
            if line.startswith("{"):
                doc = json.loads(line)
                assert isinstance(doc, dict)
                out.append(doc)
        return out

    async def until(self, what: str, check: Callable[[], Any], within: float = 15.0) -> Any:
        """Poll `check` until it returns something truthy; fail with `what`
        (and the daemon's log tail) on timeout or if the daemon exits."""
        deadline = time.monotonic() + within
        while True:
            self.notify.drain()
            value = check()
            if value:
                return value
            code = self.exited()
            assert code is None, f"daemon exited ({code}) waiting for {what}:\n{self.tail()}"
            assert time.monotonic() < deadline, f"no {what} within {within}s:\n{self.tail()}"
            await asyncio.sleep(POLL)

    async def datagram(
        self, key: str, *, since: int = 0, match: str = "", within: float = 15.0
    ) -> Datagram:
        """The first datagram at index >= `since` carrying `key` (and `match`
        in its value)."""

        def find() -> Datagram | None:
            for d in self.notify.having(key, since=since):
                if match in d.fields[key]:
                    return d
            return None

        found: Datagram = await self.until(f"{key} {match!r}", find, within)
        return found

    def tail(self, lines: int = 30) -> str:
        received = "\n".join(repr(d.text) for d in self.notify.drain()[-15:])
        log = "\n".join(self.stderr().splitlines()[-lines:])
        return f"--- last datagrams:\n{received}\n--- log tail:\n{log}"
