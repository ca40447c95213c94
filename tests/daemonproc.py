"""`kanade-watchdog run` as a real subprocess, its JSON log lines, and its config.

`DaemonProc` starts `python -m kanade_watchdog run --log-format json
--log-level debug`, reads stderr in a background thread (one parsed JSON
object per line; anything else is kept apart as raw text), and offers async
polling helpers so the test's event loop (audit subscriptions, a second
client) keeps running while it waits. Whatever happens, `close()` kills the
process. `daemon_config` writes a config of short, test-sized timers around
either the repo's 25 resources or a small declaration of the test's own.
Used by `test_daemon`; `sdnotify` is the systemd-side counterpart (notify
socket, watchdog pings) used by the notify and journal tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO, Any

from tests.conftest import REPO, REPO_CONFIG

Line = dict[str, Any]
Predicate = Callable[[Line], bool]

WATCHDOG_NAME = "kanade-watchdog"  # [nats] name: the audit's client filter
POLL = 0.01

# What every daemon test runs with unless it says otherwise: quick reconnects
# and requests, and a resync so rare it cannot heal anything during a test.
DEFAULT_NATS: dict[str, str] = {
    "request_timeout": "500ms",
    "reconnect_wait": "100ms",
    "connect_timeout": "500ms",
}
DEFAULT_WATCHDOG: dict[str, str | bool] = {
    "resync_interval": "1h",
    "resync_jitter": "0s",
    "backoff_initial": "50ms",
    "backoff_max": "1s",
    "permanent_retry": "1s",
    "stop_timeout": "20s",
    "pass_deadline": "10s",
}


def _toml_value(value: str | bool | list[str]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # a JSON string or list of strings is valid TOML


def repo_resources() -> str:
    """The 25 resource tables of the repo's config.toml, without its settings."""
    text = REPO_CONFIG.read_text()
    return text[text.index("\n[streams.") :]


def daemon_config(
    path: Path,
    server_url: str,
    *,
    resources: str | None = None,
    watchdog: Mapping[str, str | bool] | None = None,
    nats: Mapping[str, str] | None = None,
    spec_version: int | None = None,
    http: str | None = None,
) -> Path:
    """Write a daemon config: test timers, `resources` (default: the repo's 25),
    and `[http] listen = http` when given."""
    nats_settings: dict[str, str | bool | list[str]] = {
        "servers": [server_url],
        "name": WATCHDOG_NAME,
        **DEFAULT_NATS,
        **(nats or {}),
    }
    watchdog_settings = {**DEFAULT_WATCHDOG, **(watchdog or {})}
    out = [] if spec_version is None else [f"spec_version = {spec_version}", ""]
    out += ["[nats]"]
    out += [f"{k} = {_toml_value(v)}" for k, v in nats_settings.items()]
    out += ["", "[watchdog]"]
    out += [f"{k} = {_toml_value(v)}" for k, v in watchdog_settings.items()]
    if http is not None:
        out += ["", "[http]", f"listen = {_toml_value(http)}"]
    out += ["", resources if resources is not None else repo_resources(), ""]
    path.write_text("\n".join(out))
    return path


def is_action(action: str, **expected: str) -> Predicate:
    """A predicate: the line has this action and these field values."""

    def check(line: Line) -> bool:
        return line.get("action") == action and all(line.get(k) == v for k, v in expected.items())

    return check


def is_pass(trigger: str) -> Predicate:
    """A predicate: the debug summary of a pass, by its trigger ("events" for a
    pass of events), read from its structured fields."""

    def check(line: Line) -> bool:
        return line.get("scope") is not None and line.get("trigger") == trigger

    return check


def has_message(fragment: str) -> Predicate:
    def check(line: Line) -> bool:
        return fragment in str(line.get("message", ""))

    return check


class DaemonProc:
    """One `kanade-watchdog run` subprocess and everything it logged."""

    def __init__(self, config: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.env = env
        self.lines: list[Line] = []  # parsed JSON log lines, in order
        self.raw: list[str] = []  # stderr lines that were not JSON objects
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> DaemonProc:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")
        }
        env.update(self.env or {})
        argv = [
            sys.executable,
            "-m",
            "kanade_watchdog",
            "run",
            "--config",
            str(self.config),
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ]
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # signals come from the test only
        )
        assert self.proc.stderr is not None
        self._reader = threading.Thread(
            target=self._read, args=(self.proc.stderr,), name="watchdog-stderr", daemon=True
        )
        self._reader.start()
        return self

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                doc = json.loads(text)
            except ValueError:
                doc = None
            with self._lock:
                if isinstance(doc, dict):
                    self.lines.append(doc)
                else:
                    self.raw.append(text)
        stream.close()

    # --- reading the log ----------------------------------------------------------

    def mark(self) -> int:
        """A position in the log: pass it as `after=` to look only past it."""
        with self._lock:
            return len(self.lines)

    def find(self, predicate: Predicate, *, after: int = 0) -> list[Line]:
        with self._lock:
            snapshot = self.lines[after:]
        return [line for line in snapshot if predicate(line)]

    def count(self, predicate: Predicate, *, after: int = 0) -> int:
        return len(self.find(predicate, after=after))

    async def wait_for(
        self, predicate: Predicate, *, within: float = 10.0, after: int = 0, n: int = 1
    ) -> list[Line]:
        """The first `n` matching lines past `after`, polling for up to `within`
        seconds. Fails at once if the process exits meanwhile."""
        deadline = time.monotonic() + within
        while True:
            found = self.find(predicate, after=after)
            if len(found) >= n:
                return found[:n]
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode} while waiting;\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(found)}/{n} matching log lines after {within}s;\n{self.tail()}"
                )
            await asyncio.sleep(POLL)

    async def quiet(self, seconds: float = 0.2, *, within: float = 10.0) -> None:
        """Until the daemon has logged nothing for `seconds` (at debug level every
        pass logs a line, so no pass ran meanwhile)."""
        deadline = time.monotonic() + within
        seen, since = self.mark(), time.monotonic()
        while time.monotonic() - since < seconds:
            assert time.monotonic() < deadline, f"never quiet for {seconds}s;\n{self.tail()}"
            await asyncio.sleep(POLL)
            now = self.mark()
            if now != seen:
                seen, since = now, time.monotonic()

    def tail(self, n: int = 30) -> str:
        """The last log lines, for assertion messages (library chatter left out)."""
        with self._lock:
            ours = [e for e in self.lines if str(e.get("logger", "")).startswith("kanade")]
            lines = [json.dumps(line) for line in ours[-n:]]
            raw = self.raw[-10:]
        return "\n".join([*lines, *(f"RAW {r}" for r in raw)])

    # --- the process --------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, within: float = 10.0) -> int:
        """The exit code, polling (the loop keeps running) for up to `within` s."""
        assert self.proc is not None
        deadline = time.monotonic() + within
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon still running after {within}s;\n{self.tail()}")
            await asyncio.sleep(POLL)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return self.proc.returncode

    def close(self) -> None:
        """Kill the process whatever state it is in (the fixture's teardown)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float = 10.0, what: str = "condition"
) -> float:
    """Poll an async check every 10 ms until it holds; returns the seconds it took."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what} did not hold within {within}s")
        await asyncio.sleep(POLL)
    return time.monotonic() - started


class TcpProxy:
    """A loopback TCP relay between the daemon and its broker, in the test's loop.

    `hold()` silently drops what clients send (requests vanish, the
    connection stays up: a stalled broker or path); `cut()` closes every
    relayed connection (the client sees a disconnect) and forwards normally
    again for the connections that follow.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.holding = False
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]
        for task in (
            asyncio.create_task(self._pump(reader, up_writer, upstream=True)),
            asyncio.create_task(self._pump(up_reader, writer, upstream=False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if upstream and self.holding:
                    continue
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def hold(self) -> None:
        self.holding = True

    async def cut(self) -> None:
        writers, self._writers = self._writers, []
        for writer in writers:
            writer.close()
        self.holding = False
        await asyncio.sleep(0)

    async def close(self) -> None:
        await self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


Spawn = Callable[[Path], DaemonProc]
