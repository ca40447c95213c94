"""Shared plumbing of the issue-13 tables: the daemon and the floor as
subprocesses, brokers, the API audit, declarations written as TOML text,
percentiles and Markdown.

Black box on purpose: nothing here imports kanade_watchdog. The daemon is
`python -m kanade_watchdog run --log-format json` and is read through its
JSON log lines; one-shot commands run as `python -m kanade_watchdog COMMAND`.
Brokers are `tests.natsserver.NatsServer`; the floor is `bench.rawclient`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from bench.rawclient import FLOOR_NAME, wait_port
from tests.natsserver import NatsServer

REPO = Path(__file__).resolve().parent.parent
REPO_CONFIG = REPO / "config.toml"
WATCHDOG_NAME = "kanade-watchdog"
Line = dict[str, Any]

# --- numbers and Markdown ---------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def p50_p99_max(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    """'p50 | p99 | max' cells, or n/a cells when there is nothing."""
    if not values:
        return "n/a | n/a | n/a"
    return " | ".join(
        fmt.format(v) for v in (statistics.median(values), pct(values, 99), max(values))
    )


def machine_note() -> str:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return f"{os.cpu_count()} cores, load average {load}"


def header(title: str, command: str) -> list[str]:
    return [
        "",
        f"### {title}",
        "",
        f"`{command}` at {time.strftime('%Y-%m-%d %H:%M')} ({machine_note()})",
        "",
    ]


# --- declarations as TOML text ------------------------------------------------------------


def _toml(value: str | int | bool | list[str]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # a JSON string, number or list of strings is valid TOML


def daemon_toml(
    url: str,
    resources: str,
    *,
    nats: Mapping[str, str] | None = None,
    watchdog: Mapping[str, str | bool] | None = None,
) -> str:
    """A daemon config: the given settings over the defaults, then `resources`
    (TOML tables). Unset keys keep the daemon's own defaults."""
    out = ["[nats]", f"servers = {_toml([url])}", f'name = "{WATCHDOG_NAME}"']
    out += [f"{k} = {_toml(v)}" for k, v in (nats or {}).items()]
    out += ["", "[watchdog]"]
    out += [f"{k} = {_toml(v)}" for k, v in (watchdog or {}).items()]
    return "\n".join(out) + "\n" + resources + "\n"


def repo_resources() -> str:
    """The 25 kanade resource tables of the repo's config.toml."""
    text = REPO_CONFIG.read_text()
    return text[text.index("\n[streams.") :]


def repo_config_at(url: str) -> str:
    """The repo's config.toml as shipped, pointed at `url`."""
    return REPO_CONFIG.read_text().replace("nats://127.0.0.1:4222", url)


# --- processes ----------------------------------------------------------------------------


def kanade(*args: str) -> list[str]:
    return [sys.executable, "-m", "kanade_watchdog", *args]


def env() -> dict[str, str]:
    """The benchmark's environment, less systemd's (no notify socket)."""
    drop = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")
    out = {k: v for k, v in os.environ.items() if k not in drop}
    out["PYTHONPATH"] = str(REPO)
    return out


class Proc:
    """A subprocess whose output lines are JSON objects: the daemon (stderr,
    `--log-format json`) or the floor (stdout). Lines are read in a thread
    with their arrival time; non-JSON lines are kept as raw text."""

    def __init__(self, argv: list[str], *, stream: str = "stderr") -> None:
        self.argv = argv
        self.lines: list[Line] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        out = subprocess.PIPE if stream == "stdout" else subprocess.DEVNULL
        err = subprocess.PIPE if stream == "stderr" else subprocess.DEVNULL
        self.started = time.time()
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        pipe = self.proc.stdout if stream == "stdout" else self.proc.stderr
        assert pipe is not None
        self._reader = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._reader.start()

    @classmethod
    def daemon(cls, config: Path, *, level: str = "debug") -> Proc:
        return cls(
            kanade("run", "--config", str(config), "--log-format", "json", "--log-level", level)
        )

    @classmethod
    def floor(cls, configs: Path, url: str, *extra: str) -> Proc:
        argv = [sys.executable, "-m", "bench.rawclient", "floor", str(configs), url, *extra]
        return cls(argv, stream="stdout")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, pipe: IO[bytes]) -> None:
        for raw in pipe:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                doc = json.loads(text)
            except ValueError:
                doc = None
            with self._lock:
                if isinstance(doc, dict):
                    doc["_seen"] = time.time()
                    self.lines.append(doc)
                else:
                    self.raw.append(text)

    def mark(self) -> int:
        with self._lock:
            return len(self.lines)

    def find(self, pred: Callable[[Line], bool], *, after: int = 0) -> list[Line]:
        with self._lock:
            return [line for line in self.lines[after:] if pred(line)]

    async def wait_for(
        self, pred: Callable[[Line], bool], *, within: float, after: int = 0
    ) -> Line:
        deadline = time.monotonic() + within
        while True:
            found = self.find(pred, after=after)
            if found:
                return found[0]
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[2:4]} exited {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.argv[2:4]}: nothing matched in {within}s: {self.tail()}")
            await asyncio.sleep(0.005)

    async def quiet(self, seconds: float, *, within: float = 60.0) -> None:
        """Until nothing was printed for `seconds`."""
        deadline = time.monotonic() + within
        seen, since = self.mark(), time.monotonic()
        while time.monotonic() - since < seconds and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            if self.mark() != seen:
                seen, since = self.mark(), time.monotonic()

    def tail(self, n: int = 8) -> str:
        with self._lock:
            lines = [json.dumps({k: v for k, v in x.items() if k != "_seen"}) for x in self.lines]
            return "\n".join(lines[-n:] + self.raw[-5:])

    def signal(self, sig: int = signal.SIGHUP) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)


def is_ready(line: Line) -> bool:
    """The daemon's READY event, or the floor's first 'ready' line."""
    return line.get("action") == "ready" or line.get("event") == "ready"


def pass_line(trigger: str) -> Callable[[Line], bool]:
    """The end of a pass: the daemon's debug line `pass (TRIGGER): ...` or
    the floor's JSON `pass` event."""

    def check(line: Line) -> bool:
        if line.get("event") == "pass":
            return bool(line.get("why") == trigger)
        return str(line.get("message", "")).startswith(f"pass ({trigger})")

    return check


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- brokers -------------------------------------------------------------------------------


def start_broker(srv: NatsServer) -> float:
    """Start (or restart) and return perf_counter() when its port first greets."""
    srv.start(wait=False)
    return wait_port(srv.port)


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value))
    return path


# --- the broker's own API audit --------------------------------------------------------------


class Audit:
    """$JS.EVENT.ADVISORY.API by client name: request subjects with their
    arrival time, so a table can say when a pass listed and what it wrote."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple[float, str]]] = defaultdict(list)
        self.creates: dict[str, Counter[str]] = defaultdict(Counter)

    async def start(self, nc: Client) -> Audit:
        await nc.subscribe("$JS.EVENT.ADVISORY.API", cb=self._on_msg)
        await nc.flush()
        return self

    async def _on_msg(self, msg: Msg) -> None:
        seen = time.time()
        doc = json.loads(msg.data)
        who = (doc.get("client") or {}).get("name", "")
        subject = str(doc.get("subject", ""))
        verb = subject.removeprefix("$JS.API.")
        self.events[who].append((seen, verb))
        if verb.startswith("STREAM.CREATE."):
            self.creates[who][verb.removeprefix("STREAM.CREATE.")] += 1

    def times(self, who: str, prefix: str, *, since: float) -> list[float]:
        return [t for t, verb in self.events[who] if t >= since and verb.startswith(prefix)]


def client_name(floor: bool) -> str:
    return FLOOR_NAME if floor else WATCHDOG_NAME
