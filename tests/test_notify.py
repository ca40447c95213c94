"""sd_notify as systemd would receive it: READY, STATUS, EXTEND_TIMEOUT_USEC,
WATCHDOG, RELOADING and STOPPING from a real `kanade-watchdog run`.

Each daemon test binds a NOTIFY_SOCKET datagram socket in a temp dir
(`sdnotify.NotifiedDaemon`), runs the daemon against a real nats-server,
sends real signals, and reads the datagrams in arrival order next to the
daemon's JSON log. The pure tests pin the protocol text of `notify`. That
the pings stop while a pass is wedged past its deadline is proved
in-process, on an injected clock, by `test_lifecycle`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from kanade_watchdog.model.events import MESSAGE_IDS, Event
from kanade_watchdog.report.systemd import Notifier, watchdog_period
from tests.conftest import config_for
from tests.helpers_streams import ALL_STREAMS
from tests.natsserver import NatsServer, free_port
from tests.sdnotify import Datagram, NotifiedDaemon

SMALL_STREAMS = {"ORDERS", "KV_settings", "OBJ_blobs"}
PING_USEC = 300_000  # WATCHDOG_USEC for cadence tests: a ping every 150 ms


def small_config(
    path: Path, url: str, *, watchdog: str = "", resources: str = "", nats_extra: str = ""
) -> Path:
    """Three resources (one of each kind) and test-sized timers."""
    path.write_text(
        f"""
[nats]
servers = ["{url}"]
connect_timeout = "500ms"
request_timeout = "500ms"
reconnect_wait = "100ms"
{nats_extra}

[watchdog]
resync_interval = "1h"
resync_jitter = "0s"
backoff_initial = "50ms"
backoff_max = "1s"
permanent_retry = "1s"
stop_timeout = "3s"
{watchdog}

[streams.ORDERS]
subjects = ["orders.>"]
max_bytes = "1MiB"

[kv_buckets.settings]
history = 1

[object_stores.blobs]
max_bytes = "1MiB"
{resources}
"""
    )
    return path


async def streams_on(url: str) -> set[str]:
    nc = await nats.connect(url)
    try:
        msg = await nc.request("$JS.API.STREAM.NAMES", b"{}", timeout=5)
    finally:
        await nc.close()
    return set(json.loads(msg.data).get("streams") or [])


async def delete_stream(nc: Client, name: str) -> None:
    msg = await nc.request(f"$JS.API.STREAM.DELETE.{name}", b"", timeout=5)
    assert b'"success":true' in msg.data, msg.data


def intervals(pings: list[Datagram]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(pings)]


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., NotifiedDaemon]]:
    """Start daemons; every one is killed at the end whatever the test did."""
    started: list[NotifiedDaemon] = []

    def spawn(config: Path, **kwargs: Any) -> NotifiedDaemon:
        workdir = tmp_path / f"d{len(started)}"
        workdir.mkdir()
        d = NotifiedDaemon(config, workdir, **kwargs).start()
        started.append(d)
        return d

    yield spawn
    for d in started:
        d.stop()


@pytest.fixture
async def ready_daemon(
    server: NatsServer, tmp_path: Path, daemons: Callable[..., NotifiedDaemon]
) -> NotifiedDaemon:
    """A daemon on the small config that has sent READY=1 (pings every 150 ms)."""
    config = small_config(
        tmp_path / "watchdog.toml",
        server.url,
        watchdog='pass_deadline = "1s"',
    )
    d = daemons(config, watchdog_usec=PING_USEC)
    await d.datagram("READY")
    return d


# --- READY ----------------------------------------------------------------------------


async def test_ready_only_once_every_declared_resource_exists(
    tmp_path: Path, daemons: Callable[..., NotifiedDaemon]
) -> None:
    """READY=1 comes only after all 25 declared resources exist; before, with the
    broker down, STATUS names the broker and the start timeout is extended."""
    srv = NatsServer(tmp_path)  # not started yet: the broker is down
    try:
        d = daemons(config_for(srv.url, tmp_path))
        waiting = await d.datagram("STATUS", match="waiting for broker")
        assert waiting.fields["STATUS"] == f"waiting for broker {srv.url}"
        extend = await d.datagram("EXTEND_TIMEOUT_USEC")
        # Longer than the 10 s between two extensions, so the start never times out.
        assert int(extend.fields["EXTEND_TIMEOUT_USEC"]) > 10_000_000
        await d.until("a connect attempt", d.events)
        assert not d.notify.having("READY"), d.tail()

        srv.start()
        ready = await d.datagram("READY", within=30)
        assert ready.fields["READY"] == "1"
        assert ready.fields["STATUS"].startswith("25/25 in sync")
        # The log is written before the datagram is sent: at READY, every
        # create was already logged, and the ready line comes after all of them.
        events = d.events()
        actions = [e.get("action") for e in events]
        ready_at = actions.index("ready")
        created = {e["stream"] for e in events[:ready_at] if e.get("action") == "created"}
        assert created == ALL_STREAMS
        assert await streams_on(srv.url) >= ALL_STREAMS
        assert len(d.notify.having("READY")) == 1
    finally:
        srv.stop()


async def test_no_ready_while_a_resource_cannot_be_created(
    tmp_path: Path, daemons: Callable[..., NotifiedDaemon]
) -> None:
    """A resource the broker refuses keeps READY=1 back and STATUS says which one;
    SIGHUP before READY sends no RELOADING=1, and dropping it lets READY=1 through."""
    srv = NatsServer(tmp_path, jetstream_conf="max_file_store: 64MB").start()
    try:
        big = '[streams.BIG]\nsubjects = ["big.>"]\nmax_bytes = "1GiB"\n'
        config = small_config(tmp_path / "watchdog.toml", srv.url, resources=big)
        d = daemons(config)
        status = await d.datagram("STATUS", match="1 failing: BIG")
        assert status.fields["STATUS"].startswith("waiting for 1 resource(s): BIG (3/4 in sync")
        assert await streams_on(srv.url) == SMALL_STREAMS
        assert not d.notify.having("READY"), d.tail()

        small_config(config, srv.url)  # the operator drops BIG
        d.send(signal.SIGHUP)
        ready = await d.datagram("READY")
        assert ready.fields["STATUS"].startswith("3/3 in sync")
        assert not d.notify.having("RELOADING"), d.tail()
    finally:
        srv.stop()


async def test_sighup_before_ready_swaps_the_config_without_reloading(
    tmp_path: Path, daemons: Callable[..., NotifiedDaemon]
) -> None:
    """SIGHUP during the start (broker down) reloads the file but sends neither
    RELOADING=1 nor READY=1; READY=1 still waits for the resources."""
    srv = NatsServer(tmp_path)
    try:
        config = small_config(tmp_path / "watchdog.toml", srv.url)
        d = daemons(config)
        await d.datagram("STATUS", match="waiting for broker")
        extra = '[streams.ADDED]\nsubjects = ["added.>"]\n'
        small_config(config, srv.url, resources=extra)
        d.send(signal.SIGHUP)
        await d.until(
            "the reload", lambda: [e for e in d.events() if e.get("action") == "reloaded"]
        )
        assert not d.notify.having("RELOADING"), d.tail()
        assert not d.notify.having("READY"), d.tail()

        srv.start()
        ready = await d.datagram("READY", within=30)
        assert ready.fields["STATUS"].startswith("4/4 in sync")
        assert await streams_on(srv.url) == {*SMALL_STREAMS, "ADDED"}
    finally:
        srv.stop()


# --- STATUS ---------------------------------------------------------------------------


async def test_status_line_reports_the_last_heal(
    ready_daemon: NotifiedDaemon, client: Client
) -> None:
    """After a stream deleted from outside is re-created, STATUS says so:
    '3/3 in sync, last heal ORDERS HH:MM:SS'."""
    d = ready_daemon
    assert d.notify.having("READY")[-1].fields["STATUS"].startswith("3/3 in sync")
    await delete_stream(client, "ORDERS")
    status = await d.datagram("STATUS", match="last heal ORDERS")
    assert re.fullmatch(r"3/3 in sync, last heal ORDERS \d\d:\d\d:\d\d", status.fields["STATUS"])


async def test_status_line_says_which_broker_it_waits_for_after_a_loss(
    ready_daemon: NotifiedDaemon, server: NatsServer
) -> None:
    """A broker lost after READY turns STATUS into 'waiting for broker <url>', and
    it goes back to the in-sync summary when the broker returns."""
    d = ready_daemon
    mark = len(d.notify.drain())
    server.kill()
    await d.datagram("STATUS", since=mark, match=f"waiting for broker {server.url}")
    server.start()
    back = await d.datagram("STATUS", since=mark, match="3/3 in sync", within=20)
    assert back.fields["STATUS"].startswith("3/3 in sync")


async def test_reload_to_other_servers_names_them_in_the_log_and_status(
    ready_daemon: NotifiedDaemon, server: NatsServer
) -> None:
    """After SIGHUP with [nats].servers changed to a broker that is down, the
    `connecting to` line and STATUS name the new server, never the old one."""
    d = ready_daemon
    elsewhere = f"nats://127.0.0.1:{free_port()}"
    small_config(d.config, elsewhere, watchdog='pass_deadline = "1s"')
    mark = len(d.notify.drain())
    d.send(signal.SIGHUP)
    await d.until(
        "a new connection attempt",
        lambda: [e for e in d.events() if e["message"] == f"connecting to {elsewhere}"],
    )
    await d.datagram("STATUS", since=mark, match=f"waiting for broker {elsewhere}")
    await asyncio.sleep(0.3)
    connecting = [e["message"] for e in d.events() if e["message"].startswith("connecting to")]
    assert connecting == [f"connecting to {server.url}", f"connecting to {elsewhere}"]
    statuses = [s.fields["STATUS"] for s in d.notify.having("STATUS", since=mark)]
    assert statuses[-1] == f"waiting for broker {elsewhere}", statuses
    assert not [s for s in statuses if "waiting for broker" in s and server.url in s], statuses


# --- WATCHDOG -------------------------------------------------------------------------


async def test_watchdog_pings_at_half_of_watchdog_usec(ready_daemon: NotifiedDaemon) -> None:
    """With WATCHDOG_USEC=300ms the daemon sends WATCHDOG=1 every ~150 ms, never
    letting a whole period pass without one."""
    d = ready_daemon
    mark = len(d.notify.drain())
    await d.until("8 pings", lambda: len(d.notify.having("WATCHDOG", since=mark)) >= 8)
    gaps = intervals(d.notify.having("WATCHDOG", since=mark))
    assert 0.12 <= statistics.median(gaps) <= 0.2, gaps
    assert max(gaps) < PING_USEC / 1e6, gaps


async def test_watchdog_keeps_pinging_while_the_broker_is_down(
    ready_daemon: NotifiedDaemon, server: NatsServer
) -> None:
    """A broker that is down is not a wedge: pings go on, well past the wedge
    limit (pass_deadline + request_timeout = 1.5 s), with no gap of a period."""
    d = ready_daemon
    server.kill()
    down = await d.datagram("STATUS", match="waiting for broker")
    horizon = down.at + 2.5
    await d.until(
        "pings 2.5 s past the loss",
        lambda: any(p.at > horizon for p in d.notify.having("WATCHDOG")),
        within=10,
    )
    window = [p for p in d.notify.having("WATCHDOG") if p.at >= down.at]
    assert max(intervals(window)) < PING_USEC / 1e6, intervals(window)


async def test_no_watchdog_pings_without_watchdog_usec(
    server: NatsServer, tmp_path: Path, daemons: Callable[..., NotifiedDaemon]
) -> None:
    """Without WATCHDOG_USEC (no WatchdogSec= in the unit) no WATCHDOG=1 is sent."""
    d = daemons(small_config(tmp_path / "watchdog.toml", server.url))
    await d.datagram("READY")
    await asyncio.sleep(0.3)
    assert not d.notify.having("WATCHDOG")


# --- RELOADING / STOPPING -------------------------------------------------------------


async def test_sighup_sends_reloading_then_ready_once_the_new_resource_exists(
    ready_daemon: NotifiedDaemon, server: NatsServer
) -> None:
    """SIGHUP sends RELOADING=1 with MONOTONIC_USEC (our CLOCK_MONOTONIC), and
    READY=1 only after the pass on the new file created the added stream."""
    d = ready_daemon
    small_config(d.config, server.url, resources='[streams.ADDED]\nsubjects = ["added.>"]\n')
    mark = len(d.notify.drain())
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    d.send(signal.SIGHUP)
    reloading = await d.datagram("RELOADING", since=mark)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reloading.fields["RELOADING"] == "1"
    assert before <= int(reloading.fields["MONOTONIC_USEC"]) <= after
    ready = await d.datagram("READY", since=mark)
    assert ready.at >= reloading.at
    created = [e for e in d.events() if e.get("action") == "created" and e["stream"] == "ADDED"]
    assert created, "READY=1 came before the added stream was created"
    assert created[0]["trigger"] == "reload"
    assert ready.fields["STATUS"].startswith("4/4 in sync")
    assert "ADDED" in await streams_on(server.url)


async def test_sighup_with_a_broken_file_answers_ready_and_keeps_running(
    ready_daemon: NotifiedDaemon,
) -> None:
    """SIGHUP on an invalid file still ends the reload (RELOADING=1, READY=1),
    logs reload_failed with its MESSAGE_ID, and the daemon keeps running."""
    d = ready_daemon
    d.config.write_text("[streams.BROKEN]\nsubjects = 42\n")
    mark = len(d.notify.drain())
    d.send(signal.SIGHUP)
    await d.datagram("RELOADING", since=mark)
    ready = await d.datagram("READY", since=mark)
    assert ready.fields["STATUS"].startswith("3/3 in sync")
    failed = [e for e in d.events() if e.get("action") == "reload_failed"]
    assert failed, d.tail()
    assert failed[0]["message_id"] == MESSAGE_IDS[Event.RELOAD_FAILED]
    assert "streams.BROKEN.subjects" in failed[0]["message"]
    assert d.exited() is None


async def test_sigterm_sends_stopping_and_exits_0(ready_daemon: NotifiedDaemon) -> None:
    """SIGTERM sends STOPPING=1 and the daemon exits 0 well within stop_timeout."""
    d = ready_daemon
    mark = len(d.notify.drain())
    d.send(signal.SIGTERM)
    stopping = await d.datagram("STOPPING", since=mark)
    assert stopping.fields["STOPPING"] == "1"
    assert await d.wait_exit(within=5) == 0


# --- a notify socket that cannot be reached -------------------------------------------


def warned_about_notify(d: NotifiedDaemon) -> list[dict[str, Any]]:
    return [e for e in d.events() if "cannot notify systemd" in e["message"]]


async def test_unreachable_notify_socket_at_start_is_logged_once_and_the_daemon_runs(
    server: NatsServer, tmp_path: Path, daemons: Callable[..., NotifiedDaemon]
) -> None:
    """NOTIFY_SOCKET naming a path where nothing listens (a stale unit, a wrong
    variable) does not stop the start, but is said loudly: one ERROR line at
    start naming the socket, the reason and what systemd will miss (READY=1,
    the pings); then the daemon creates everything and heals as usual, and
    the pings failing the same way add no line."""
    config = small_config(tmp_path / "watchdog.toml", server.url)
    nowhere = str(tmp_path / "no-such-notify-socket")
    d = daemons(config, watchdog_usec=PING_USEC, notify_path=nowhere)
    await d.until("ready", lambda: [e for e in d.events() if e.get("action") == "ready"])
    await asyncio.sleep(0.5)  # a few pings (every 150 ms), each failing
    assert d.exited() is None, d.tail()
    [error] = warned_about_notify(d)
    assert error["level"] == "error"
    assert nowhere in error["message"]
    assert "FileNotFoundError" in error["message"]
    assert "will not see READY=1" in error["message"]
    assert error["ts"] < min(e["ts"] for e in d.events() if e.get("action") == "created")
    assert await streams_on(server.url) == SMALL_STREAMS
    d.send(signal.SIGTERM)
    assert await d.wait_exit(within=5) == 0


async def test_notify_socket_gone_mid_run_is_logged_once_per_change(
    ready_daemon: NotifiedDaemon, client: Client, server: NatsServer
) -> None:
    """A notify socket that stops answering while the daemon runs (pings every
    150 ms get ConnectionRefusedError) costs one warning, not one per ping;
    the daemon keeps healing, says once when notifications get through
    again, and still stops with exit 0."""
    d = ready_daemon
    d.notify.refuse()
    await d.until("the warning", lambda: warned_about_notify(d))
    await asyncio.sleep(0.6)  # four more failing pings
    await delete_stream(client, "ORDERS")
    await d.until("the heal", lambda: [e for e in d.events() if e.get("action") == "created"][3:])
    assert d.exited() is None, d.tail()
    [warning] = warned_about_notify(d)
    assert "ConnectionRefusedError" in warning["message"]

    mark = len(d.notify.drain())
    d.notify.rebind()  # the service manager is back on the same path
    await d.datagram("WATCHDOG", since=mark)
    again = [e for e in d.events() if "delivered again" in e["message"]]
    assert len(again) == 1, d.tail()
    assert len(warned_about_notify(d)) == 1
    assert "ORDERS" in await streams_on(server.url)
    d.send(signal.SIGTERM)
    assert await d.wait_exit(within=5) == 0


async def test_a_service_manager_that_stops_reading_does_not_freeze_the_daemon(
    ready_daemon: NotifiedDaemon, client: Client, server: NatsServer
) -> None:
    """The notify socket's queue fills up (the receiver reads nothing; a ping
    every 150 ms): sending must not block. The daemon heals a delete
    meanwhile, warns once that notifications cannot be delivered, and says
    so once they are read again."""
    d = ready_daemon
    d.notify.drain()
    await asyncio.sleep(2.5)  # 16 pings: the kernel's queue (10 datagrams) is full
    await delete_stream(client, "ORDERS")

    def created() -> list[dict[str, Any]]:
        return [e for e in d.events() if e.get("action") == "created" and e["trigger"] != "startup"]

    deadline = time.monotonic() + 5
    while not created():  # watching the log only: the socket stays unread
        assert time.monotonic() < deadline, d.tail()
        await asyncio.sleep(0.02)
    assert "ORDERS" in await streams_on(server.url)
    [warning] = warned_about_notify(d)
    assert "BlockingIOError" in warning["message"]
    await d.datagram("WATCHDOG", since=len(d.notify.drain()))
    await d.until(
        "the all-clear", lambda: [e for e in d.events() if "delivered again" in e["message"]]
    )
    assert len(warned_about_notify(d)) == 1


def test_notifier_failures_are_logged_once_per_change_of_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sender that raises never lets the error out; the warning comes once per
    distinct reason and an info line once it works again; a READY=1 and a
    STATUS lost to a failure go out with the next notification."""
    outcome: list[Exception | None] = [ConnectionRefusedError(111, "Connection refused")]
    sent: list[str] = []

    def send(text: str) -> bool:
        if outcome[0] is not None:
            raise outcome[0]
        sent.append(text)
        return True

    n = Notifier(send=send)
    with caplog.at_level(logging.INFO, logger="kanade_watchdog.notify"):
        n.status("3/3 in sync")
        for _ in range(50):
            n.watchdog()
        n.ready("3/3 in sync")
        assert n.ready_sent
        outcome[0] = FileNotFoundError(2, "No such file or directory")
        n.watchdog()
        n.watchdog()
        outcome[0] = None
        n.status("3/3 in sync")  # lost before, so sent now
        n.watchdog()
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING", "INFO"]
    assert "ConnectionRefusedError: Connection refused" in caplog.records[0].getMessage()
    assert "FileNotFoundError: No such file or directory" in caplog.records[1].getMessage()
    assert sent == ["READY=1\nSTATUS=3/3 in sync", "WATCHDOG=1"]
    assert n.failing == ""


# --- the protocol text ----------------------------------------------------------------


def test_notifier_messages_are_sd_notify_assignments() -> None:
    """Each call sends one newline-separated sd_notify message; STATUS repeats
    are dropped, READY also carries the status line."""
    sent: list[str] = []

    def send(text: str) -> bool:
        sent.append(text)
        return True

    n = Notifier(send=send)
    n.status("waiting for broker nats://x:4222")
    n.status("waiting for broker nats://x:4222")
    n.extend_timeout(30)
    assert not n.ready_sent
    n.ready("25/25 in sync")
    n.watchdog()
    n.stopping()
    assert sent == [
        "STATUS=waiting for broker nats://x:4222",
        "EXTEND_TIMEOUT_USEC=30000000",
        "READY=1\nSTATUS=25/25 in sync",
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=stopping",
    ]
    assert n.ready_sent


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("20000000", None, 10.0),
        ("20000000", "self", 10.0),
        ("20000000", "1", None),  # meant for another process
        ("0", None, None),
        ("", None, None),
        ("garbage", None, None),
    ],
)
def test_watchdog_period_is_half_of_watchdog_usec_for_our_pid(
    monkeypatch: pytest.MonkeyPatch, usec: str, pid: str | None, expected: float | None
) -> None:
    """The ping period is WATCHDOG_USEC/2, only when WATCHDOG_PID (if set) is us."""
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert watchdog_period() == expected
