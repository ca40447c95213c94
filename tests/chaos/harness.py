"""One scenario's world: a broker, an admin client, the durable audit, daemons.

`Scene` writes test-sized configs (the repo's 25 resources plus LEDGER, the
producer's stream), starts `kanade-watchdog run` subprocesses through
`tests.daemonproc.DaemonProc`, and answers the one question every fault
ends with: has everything converged again, and how long did it take?
"Converged" is judged on the broker (every declared resource present and,
per the planner, in sync) AND in the daemon's log (it reconnected when the
fault cut it off, then finished a pass), so a broker that merely kept its
store does not count as a heal the daemon never did.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.client import Client

from kanade_watchdog.config.load import load
from kanade_watchdog.core.plan import Action, Observed, decide
from kanade_watchdog.daemon.worker import utcnow
from kanade_watchdog.model.resources import Resource
from tests.chaos.figures import Figure
from tests.chaos.ledger import DurableAudit, api, connect
from tests.daemonproc import WATCHDOG_NAME, DaemonProc, Line, daemon_config, repo_resources
from tests.natsserver import NatsServer

LEDGER = "LEDGER"
LEDGER_SUBJECT = "ledger.chaos"
# The producer's stream. Its caps are far above what any run writes, so the
# broker never discards a message on its own: anything missing is a loss.
LEDGER_TOML = """
[streams.LEDGER]
subjects = ["ledger.>"]
storage = "file"
max_age = "7d"
max_bytes = "256MiB"
discard = "new"
allow_direct = true
"""

# Fast timers: a full resync every second makes "no writes while in sync"
# observable within a second, and short requests keep every fault bounded.
CHAOS_WATCHDOG: dict[str, str | bool] = {
    "resync_interval": "1s",
    "resync_jitter": "0s",
    "backoff_initial": "20ms",
    "backoff_max": "1s",
    "permanent_retry": "1s",
    "pass_deadline": "10s",  # above the stream list's own wait (see broker.LIST_WAIT)
    "stop_timeout": "10s",
}
CHAOS_NATS: dict[str, str] = {
    "request_timeout": "500ms",
    "reconnect_wait": "100ms",
    "connect_timeout": "500ms",
}
CONVERGE_WITHIN = 30.0
POLL = 0.02


BULK = 60  # extra plain streams, so that one pass has dozens of requests in flight


def chaos_resources(*, ledger: bool = True) -> str:
    return repo_resources() + (LEDGER_TOML if ledger else "")


def bulk_streams(n: int = BULK) -> str:
    return "".join(
        f'\n[streams.BULK_{i}]\nsubjects = ["bulk.{i}.>"]\nstorage = "file"\nmax_bytes = "1MiB"\n'
        for i in range(n)
    )


def is_pass(line: Line) -> bool:
    return str(line.get("message", "")).startswith("pass (")


def is_back(line: Line) -> bool:
    return line.get("action") == "broker_back"


def is_heal(line: Line) -> bool:
    return line.get("action") in ("created", "updated")


async def list_streams(nc: Client) -> dict[str, Observed] | None:
    """Every stream as the broker reports it, or None while it cannot answer."""
    out: dict[str, Observed] = {}
    offset = 0
    while True:
        try:
            answer = await api(nc, "$JS.API.STREAM.LIST", {"offset": offset})
        except (nats.errors.Error, TimeoutError, ValueError):
            return None
        if "error" in answer:
            return None
        page = answer.get("streams") or []
        for item in page:
            config = item.get("config") or {}
            out[str(config.get("name"))] = Observed(config=config, state=item.get("state") or {})
        offset += len(page)
        if not page or offset >= int(answer.get("total", 0) or 0):
            return out


def out_of_sync(
    resources: Iterable[Resource], observed: Mapping[str, Observed], skip: Iterable[str] = ()
) -> list[str]:
    """Declared streams that are missing or that the planner would change."""
    now = utcnow()
    skipped = set(skip)
    return [
        r.stream
        for r in resources
        if r.stream not in skipped
        and decide(r, observed.get(r.stream), now).action is not Action.IN_SYNC
    ]


class Scene:
    """Set up by the `scene` fixture; everything it starts is stopped at teardown."""

    def __init__(self, tmp: Path, server: NatsServer, figure: Figure) -> None:
        self.tmp = tmp
        self.server = server
        self.figure = figure
        self.admin: Client | None = None
        self.audit: DurableAudit | None = None
        self.daemons: list[DaemonProc] = []
        self.resources: tuple[Resource, ...] = ()

    async def open(self, *, admin_options: Mapping[str, Any] | None = None) -> Scene:
        self.admin = await connect(self.server.url, "chaos-admin", **(admin_options or {}))
        self.audit = await DurableAudit(self.admin, client_name=WATCHDOG_NAME).ensure()
        return self

    @property
    def nc(self) -> Client:
        assert self.admin is not None
        return self.admin

    @property
    def ledger(self) -> DurableAudit:
        assert self.audit is not None
        return self.audit

    def config(
        self,
        *,
        url: str | None = None,
        resources: str | None = None,
        watchdog: Mapping[str, str | bool] | None = None,
        nats: Mapping[str, str] | None = None,
        name: str = "watchdog.toml",
        spec_version: int | None = None,
    ) -> Path:
        path = daemon_config(
            self.tmp / name,
            url or self.server.url,
            resources=resources if resources is not None else chaos_resources(),
            watchdog={**CHAOS_WATCHDOG, **(watchdog or {})},
            nats={**CHAOS_NATS, **(nats or {})},
            spec_version=spec_version,
        )
        path.chmod(0o600)  # an inline password is only accepted in a private file
        self.resources = load(str(path)).resources
        return path

    async def reload(self, daemon: DaemonProc, config: Path, text: str) -> Line:
        """Rewrite the daemon's config and SIGHUP it; its `reloaded` or
        `reload_failed` line. A refused config leaves `resources` as they were."""
        await asyncio.to_thread(config.write_text, text)
        mark = daemon.mark()
        daemon.send(signal.SIGHUP)
        [line] = await daemon.wait_for(
            lambda line: line.get("action") in ("reloaded", "reload_failed"), after=mark
        )
        if line["action"] == "reloaded":
            self.resources = load(str(config)).resources
        return line

    def start(self, config: Path) -> DaemonProc:
        daemon = DaemonProc(config).start()
        self.daemons.append(daemon)
        return daemon

    async def out_of_sync(self, skip: Iterable[str] = ()) -> list[str] | None:
        observed = await list_streams(self.nc)
        if observed is None:
            return None
        return out_of_sync(self.resources, observed, skip)

    async def converge(
        self,
        daemon: DaemonProc,
        *,
        t0: float,
        after: int,
        reconnect: bool,
        within: float = CONVERGE_WITHIN,
        skip: Iterable[str] = (),
    ) -> float:
        """Seconds from `t0` (the fault's end) until the daemon has reconnected
        (when `reconnect`) and finished a pass after log position `after`, and
        the broker holds every declared resource in sync. Polls; fails after
        `within` seconds or at once if the daemon exits."""
        deadline = time.monotonic() + within
        lagging: list[str] | None = None
        while True:
            assert daemon.alive, (
                f"daemon exited with {daemon.proc and daemon.proc.poll()}\n{daemon.tail()}"
            )
            if self._daemon_passed(daemon, after=after, reconnect=reconnect):
                lagging = await self.out_of_sync(skip)
                if lagging == []:
                    return time.monotonic() - t0
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not converged {within}s after the fault (out of sync: {lagging});\n"
                    + daemon.tail()
                )
            await asyncio.sleep(POLL)

    @staticmethod
    def _daemon_passed(daemon: DaemonProc, *, after: int, reconnect: bool) -> bool:
        lines = daemon.find(lambda _line: True, after=after)
        if reconnect:
            back = next((i for i, line in enumerate(lines) if is_back(line)), None)
            if back is None:
                return False
            lines = lines[back + 1 :]
        return any(is_pass(line) for line in lines)

    def timed_out(self, daemon: DaemonProc, *, after: int = 0) -> set[str]:
        """Streams for which a request of the daemon went unanswered. A create
        the broker did carry out but answered too late is found in place by
        the retry, which then logs no `created`: counts of `created` lines
        are exact only up to these."""
        by_label = {r.label: r.stream for r in self.resources}
        out: set[str] = set()
        for line in daemon.find(lambda _line: True, after=after):
            text = str(line.get("message", ""))
            label, sep, rest = text.partition(" failing: ")
            if sep and "no answer" in rest and label in by_label:
                out.add(by_label[label])
            elif line.get("action") == "failed" and "no answer" in text:
                out.add(str(line.get("stream")))
        return out

    def heals(self, daemon: DaemonProc, *, after: int = 0) -> int:
        return daemon.count(is_heal, after=after)

    async def close(self) -> None:
        for daemon in self.daemons:
            daemon.close()
        if self.admin is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.admin.close(), timeout=5)


async def delete_and_heal(scene: Scene, daemon: DaemonProc, rng: random.Random) -> None:
    """One out-of-band delete of a random declared resource (a fault), healed again."""
    mark = daemon.mark()
    stream = rng.choice(scene.resources).stream
    answer = await api(scene.nc, f"$JS.API.STREAM.DELETE.{stream}")
    assert "error" not in answer, answer
    scene.figure.faults += 1
    took = await scene.converge(daemon, t0=time.monotonic(), after=mark, reconnect=False)
    scene.figure.converged(took)
    scene.figure.heals += 1


@contextlib.asynccontextmanager
async def scene_for(
    tmp: Path, server: NatsServer, test_name: str, *, admin_options: Mapping[str, Any] | None = None
) -> AsyncIterator[Scene]:
    """A scene around a running broker, its figure named after the test;
    every daemon it started is killed on the way out."""
    figure = Figure(scenario=test_name.removeprefix("test_"))
    world = await Scene(tmp, server, figure).open(admin_options=admin_options)
    try:
        yield world
    finally:
        await world.close()
