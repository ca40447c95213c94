"""What a hostile client or operator does to the watchdog, for `test_hostile_input`.

Another client with update rights rewrites a declared stream's config
(`forge`): forged marker metadata, control characters in metadata, limits
nobody declared. The one-shot commands are run with their output going
nowhere (`run_cli_into`: a pipe whose reader is gone, /dev/full), and the
daemon with its plain-text log (`TextDaemon`), the format a terminal or a
syslog pipe shows, where an unescaped newline would forge a record.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from tests import jsapi
from tests.conftest import REPO

FORGED_RECORD = "2026-11-27 12:00:00 INFO    created stream FORGED"
# Metadata another client writes: a whole log record after a newline,
# terminal escapes that erase and move up a line, NUL, BEL, a Unicode line
# separator, in a declared key's value and in a key of its own.
INJECTED = {
    "owner": f"x\n{FORGED_RECORD}\r\n\x1b[2K\x1b[1Acarried on",
    "note\nINFO fake": "\x00\x07\u2028",
}
# A record of the text log: "2026-11-27 18:42:37 WARNING ..." (logs.setup_logging).
TEXT_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


async def forge(nc: Client, stream: str, **changes: Any) -> dict[str, Any]:
    """Rewrite a stream the way any client with update rights can: its full
    current config with `changes`; `metadata` entries are merged into what
    is there. Returns the config sent."""
    config = dict((await jsapi.ok(nc, f"$JS.API.STREAM.INFO.{stream}"))["config"])
    metadata = changes.pop("metadata", None)
    if metadata is not None:
        config["metadata"] = {**(config.get("metadata") or {}), **metadata}
    config.update(changes)
    await jsapi.ok(nc, f"$JS.API.STREAM.UPDATE.{stream}", config)
    return config


def forged_lines(lines: list[str]) -> list[str]:
    """Output lines the tool did not write as such: a record forged by a
    newline, the tail of a split key, or a raw control character."""
    return [
        line
        for line in lines
        if line.startswith((FORGED_RECORD, "INFO fake"))
        or any(ord(c) < 32 or c in "\x7f\u2028" for c in line)
    ]


def private(path: Path, text: str) -> Path:
    """A config file only its owner reads (inline secrets are accepted there)."""
    path.write_text(text)
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class Finished:
    code: int
    stderr: str


def _argv(*args: str, config: Path) -> list[str]:
    return [sys.executable, "-m", "kanade_watchdog", *args, "--config", str(config)]


async def run_cli_into(*args: str, config: Path, stdout: str) -> Finished:
    """A command whose output goes to `stdout`: "closed-pipe" (a pipe whose
    reader has already gone, as with `| head` once head is done) or a path
    such as /dev/full."""

    def run() -> Finished:
        if stdout == "closed-pipe":
            reader, sink = os.pipe()
            os.close(reader)
        else:
            sink = os.open(stdout, os.O_WRONLY)
        try:
            proc = subprocess.run(
                _argv(*args, config=config),
                stdout=sink,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
                timeout=30,
                check=False,
            )
        finally:
            os.close(sink)
        return Finished(proc.returncode, proc.stderr)

    return await asyncio.to_thread(run)


class TextDaemon:
    """`kanade-watchdog run --log-format text` and every stderr line it wrote."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> TextDaemon:
        self.proc = await asyncio.create_subprocess_exec(
            *_argv("run", "--log-format", "text", config=self.config),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    async def wait_for(self, check: Callable[[str], bool], *, within: float = 15.0) -> str:
        deadline = time.monotonic() + within
        while True:
            found = [line for line in self.lines if check(line)]
            if found:
                return found[0]
            assert self.proc is not None
            assert self.proc.returncode is None, self.lines[-20:]
            assert time.monotonic() < deadline, self.lines[-20:]
            await asyncio.sleep(0.01)

    async def stop(self) -> int:
        """SIGTERM; the exit code once every line is read."""
        assert self.proc is not None
        assert self._reader is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), timeout=20)
        await asyncio.wait_for(self._reader, timeout=5)
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
