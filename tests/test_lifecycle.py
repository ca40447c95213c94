"""The supervisor (`daemon.main.Daemon`) in-process: a real `run()` in the
test's event loop, its connection replaced by `FakeLink` (the broker is
`tests.fakebroker.FakeBroker`, or a `SlowBroker` around it to wedge a pass),
sd_notify captured by the `Notifier`'s injectable sender, and the clock the
daemon measures a stuck pass with under the test's control.

The subprocess behaviour (real signals, a real broker) is in `test_daemon`
and `test_notify`; here the lifecycle rules are proved one by one: pings
withheld from a wedged pass, a task's death logged at once with its
traceback and exit 70, a stop that misses its deadline exits non-zero.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kanade_watchdog.broker.link import Connected
from kanade_watchdog.config.load import parse
from kanade_watchdog.core import ports
from kanade_watchdog.core.reports import RunState
from kanade_watchdog.daemon.main import Connection, Daemon
from kanade_watchdog.model import exitcodes
from kanade_watchdog.model.settings import Config, NatsSettings
from kanade_watchdog.report.journal import JournalHandler
from kanade_watchdog.report.logs import record_fields
from kanade_watchdog.report.systemd import Notifier
from tests.capture import Capture
from tests.fakebroker import SERVER_VERSION, FakeBroker, SlowBroker


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Sent:
    """sd_notify messages as the daemon sent them."""

    messages: list[str] = field(default_factory=list)

    def __call__(self, text: str) -> bool:
        self.messages.append(text)
        return True

    def count(self, prefix: str) -> int:
        return sum(m.startswith(prefix) for m in self.messages)


class FakeLink:
    """A connection that is up at once with `broker`; `crash` makes its task
    raise once connected (a bug in the connection code)."""

    def __init__(
        self,
        broker: ports.Broker,
        settings: NatsSettings,
        *,
        on_connecting: Callable[[str], None],
        on_connected: Callable[[Connected], None],
        crash: BaseException | None = None,
        **_callbacks: Any,
    ) -> None:
        self.broker = broker
        self.settings = settings
        self.on_connecting = on_connecting
        self.on_connected = on_connected
        self.crash = crash
        self.closed = False

    async def run(self) -> None:
        self.on_connecting(", ".join(self.settings.servers))
        self.on_connected(Connected(self.broker, "fake:4222", SERVER_VERSION, True, False))
        await asyncio.sleep(0)
        if self.crash is not None:
            raise self.crash
        await asyncio.Event().wait()

    def reconfigure(self, settings: NatsSettings, *, advisories: bool) -> None:
        self.settings = settings

    async def close(self) -> None:
        self.closed = True


def links_to(broker: ports.Broker, *, crash: BaseException | None = None) -> Any:
    def connect(settings: NatsSettings, **callbacks: Any) -> Connection:
        return FakeLink(broker, settings, crash=crash, **callbacks)

    return connect


def make_config(tmp_path: Path, **watchdog: str) -> Config:
    document: dict[str, Any] = {
        "nats": {"servers": ["nats://fake:4222"], "request_timeout": "2s"},
        "watchdog": {"resync_interval": "1h", "pass_deadline": "1h", **watchdog},
        "streams": {"ORDERS": {"subjects": ["orders.>"]}, "EVENTS": {"subjects": ["ev.>"]}},
    }
    return parse(document, str(tmp_path / "watchdog.toml"))


def write(path: Path, text: str) -> None:
    path.write_text(text)


async def until(check: Callable[[], bool], *, within: float = 5.0) -> None:
    """Poll `check` on the loop (the daemon's tasks run meanwhile)."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - a condition, not an event, is awaited
            await asyncio.sleep(0.005)


@pytest.fixture
async def cleanup() -> AsyncIterator[list[SlowBroker]]:
    """Held brokers released at the end, so no task outlives the test's loop."""
    held: list[SlowBroker] = []
    yield held
    for slow in held:
        slow.release.set()
    me = asyncio.current_task()
    rest = [t for t in asyncio.all_tasks() if t is not me]
    if rest:
        await asyncio.wait(rest, timeout=2)


async def test_pings_are_withheld_while_a_pass_is_stuck_past_its_deadline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cleanup: list[SlowBroker]
) -> None:
    """A pass stuck in a broker call that ignores cancellation: WATCHDOG=1 goes
    on until the injected clock says the pass is older than pass_deadline +
    request_timeout, then stops with one ERROR line; once the call returns,
    the pings resume. Health says the same as the pings."""
    config = make_config(tmp_path)
    limit = config.watchdog.pass_deadline + config.nats.request_timeout
    slow = SlowBroker(FakeBroker(), hold=frozenset({"info"}), stubborn=True)
    cleanup.append(slow)
    clock, sent = FakeClock(), Sent()
    daemon = Daemon(
        config, notifier=Notifier(send=sent), connect=links_to(slow), clock=clock, watchdog=0.005
    )
    run = asyncio.create_task(daemon.run())
    await until(lambda: sent.count("READY=1") == 1)
    daemon.worker.advisory("ORDERS")  # a partial pass: its read is held
    await slow.held.wait()
    before = sent.count("WATCHDOG=1")
    await until(lambda: sent.count("WATCHDOG=1") >= before + 3)
    assert daemon.health().ok

    with caplog.at_level(logging.ERROR, logger="kanade_watchdog"):
        clock.advance(limit - 0.5)
        assert daemon.health().ok
        clock.advance(1.0)
        assert not daemon.health().ok
        await until(lambda: "withholding watchdog pings" in caplog.text)
        withheld = sent.count("WATCHDOG=1")
        await asyncio.sleep(0.1)  # twenty ping periods
        assert sent.count("WATCHDOG=1") == withheld
    [line] = [r.getMessage() for r in caplog.records if "withholding" in r.getMessage()]
    assert f"limit {limit:.0f}s" in line

    slow.release.set()
    await until(lambda: not daemon.worker.busy)
    await until(lambda: sent.count("WATCHDOG=1") > withheld)
    assert daemon.health().ok
    daemon.request_stop()
    assert await run == exitcodes.OK


async def test_a_task_that_dies_is_logged_at_once_with_its_traceback_and_exit_70(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection task raising a TypeError (a bug) is logged the moment it
    dies, before the stop begins, with its traceback in the journal's
    TRACEBACK field (never in MESSAGE); the daemon then stops and run()
    returns 70 so systemd restarts it."""
    entries: list[dict[str, str]] = []

    def send(entry: list[str]) -> None:
        entries.append(dict(e.split("=", 1) for e in entry))

    journal = JournalHandler(fields_of=record_fields, send=send)
    logging.getLogger("kanade_watchdog").addHandler(journal)
    try:
        with caplog.at_level(logging.INFO, logger="kanade_watchdog"):
            daemon = Daemon(
                make_config(tmp_path),
                notifier=Notifier(send=Sent()),
                connect=links_to(FakeBroker(), crash=TypeError("unexpected keyword 'x'")),
            )
            code = await daemon.run()
    finally:
        logging.getLogger("kanade_watchdog").removeHandler(journal)
    assert code == exitcodes.INTERNAL
    messages = [r.getMessage() for r in caplog.records]
    died = next(i for i, m in enumerate(messages) if m.startswith("task connection failed"))
    assert died < messages.index("stopping")
    assert "TypeError: unexpected keyword 'x'" in messages[died]
    [entry] = [e for e in entries if e["MESSAGE"].startswith("task connection failed")]
    assert entry["PRIORITY"] == "3"
    assert "Traceback" not in entry["MESSAGE"]
    assert entry["TRACEBACK"].startswith("Traceback (most recent call last)")
    assert entry["TRACEBACK"].endswith("TypeError: unexpected keyword 'x'")


async def test_a_stop_that_misses_its_deadline_exits_non_zero(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cleanup: list[SlowBroker]
) -> None:
    """SIGTERM while a pass is stuck in a call that ignores cancellation: the
    stop gives up at stop_timeout, names the task it could not end, and
    run() returns 1 (never 0: systemd must not record a clean stop), with
    the stuck task listed for the exit path."""
    slow = SlowBroker(FakeBroker(), hold=frozenset({"info"}), stubborn=True)
    cleanup.append(slow)
    sent = Sent()
    daemon = Daemon(
        make_config(tmp_path, stop_timeout="1s"),
        notifier=Notifier(send=sent),
        connect=links_to(slow),
    )
    run = asyncio.create_task(daemon.run())
    await until(lambda: sent.count("READY=1") == 1)
    daemon.worker.advisory("EVENTS")
    await slow.held.wait()
    with caplog.at_level(logging.ERROR, logger="kanade_watchdog"):
        daemon.request_stop()
        code = await asyncio.wait_for(run, 5)
    assert code == exitcodes.FAILURE
    assert daemon.abandoned == ["worker"]
    assert "tasks still running at the stop deadline: worker" in caplog.text
    assert sent.count("STOPPING=1") == 1


async def test_run_states_follow_start_reload_and_stop(tmp_path: Path) -> None:
    """starting -> running at start, reloading while a SIGHUP's file is read and
    applied (RELOADING=1 after READY), running again, stopping at the end;
    a signal only sets the flag, the main loop does the reload."""
    config = make_config(tmp_path)
    write(
        Path(config.path),
        '[nats]\nservers = ["nats://fake:4222"]\n[watchdog]\nresync_interval = "1h"\n'
        '[streams.ORDERS]\nsubjects = ["orders.>"]\n',
    )
    sent, seen = Sent(), Capture()
    daemon = Daemon(
        config, notifier=Notifier(send=sent), connect=links_to(FakeBroker()), reporters=[seen]
    )
    run = asyncio.create_task(daemon.run())
    await until(lambda: sent.count("READY=1") == 1)
    daemon.request_reload()
    assert daemon.state is RunState.RUNNING  # the flag only: nothing ran yet
    await until(lambda: sent.count("READY=1") == 2)
    assert daemon.config.by_stream().keys() == {"ORDERS"}
    daemon.request_stop()
    assert await run == exitcodes.OK
    assert seen.states == [
        RunState.STARTING,
        RunState.RUNNING,
        RunState.RELOADING,
        RunState.RUNNING,
        RunState.STOPPING,
    ]
    assert sent.count("RELOADING=1") == 1
    [reload] = seen.reloads
    assert (reload.ok, reload.resources, reload.generation) == (True, 1, 1)
    assert seen.declarations == [("ORDERS", "EVENTS"), ("ORDERS",)]  # at start, at reload
    assert seen.passes[-1].generation == 1
