"""`kanade-watchdog run`: the supervisor that wires triggers, the worker and systemd.

One asyncio loop, named tasks: `connection` (connect, reconnect forever,
rebuild a closed client), `worker` (the only reconciler), `watchdog` (pings
systemd while the worker makes progress), plus the resync timer and the
advisory subscription, which only mark work. Signal handlers set flags:
SIGTERM/SIGINT stop within `stop_timeout`; SIGHUP wakes the `reload` task,
which reads and validates the file in a thread of its own (the loop keeps
serving signals and pings however long the read takes) and then swaps the
config; an invalid or unreadable file keeps the old one running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time

from kanade_watchdog.broker.aio import bounded, in_thread
from kanade_watchdog.broker.link import Connected, Link
from kanade_watchdog.config.load import load
from kanade_watchdog.daemon import advisories
from kanade_watchdog.daemon.resync import ResyncTimer
from kanade_watchdog.daemon.worker import Worker
from kanade_watchdog.model import exitcodes
from kanade_watchdog.model.errors import ConfigError
from kanade_watchdog.model.events import Event, Trigger
from kanade_watchdog.model.settings import Config
from kanade_watchdog.report.logs import fields
from kanade_watchdog.report.status import StatusBoard
from kanade_watchdog.report.systemd import Notifier, watchdog_period

log = logging.getLogger("kanade_watchdog")

TEST_HOOKS_ENV = "KANADE_WATCHDOG_TEST_HOOKS"  # enables SIGUSR2 = wedge the worker
EXTEND_EVERY = 10.0  # while starting: ask systemd for more time, this often
RELOAD_READ_TIMEOUT = 10.0  # a config file that takes longer to read is given up on


class Daemon:
    def __init__(self, config: Config, *, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.board = StatusBoard(config.resources)
        self.worker = Worker(config, board=self.board)
        self.stop_requested = asyncio.Event()
        self.link = Link(
            config.nats,
            advisories=config.watchdog.advisories,
            on_connecting=self._on_connecting,
            on_connected=self._on_connected,
            on_lost=self._on_lost,
            on_advisory=self._on_advisory,
            on_error=self._on_client_error,
        )
        self._stopping = False
        self._reload_wanted = asyncio.Event()  # set by SIGHUP, served by the reload task
        self._reload_ready_due = False
        self._timer: ResyncTimer | None = None
        self.board.on_change = self._on_status

    # --- systemd status ----------------------------------------------------------------

    # After SIGHUP, READY=1 waits for the first pass on the new config: passes
    # finished (or in flight) when the signal came do not count.
    _reload_after_pass = 0

    def _on_status(self) -> None:
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
        elif self._reload_ready_due and self.worker.passes > self._reload_after_pass:
            self._reload_ready_due = False
            self.notifier.ready(line)
            return
        self.notifier.status(line)

    # --- connection (`link` calls these) ---------------------------------------------------

    def _on_connecting(self, servers: str) -> None:
        self.board.broker_down(f"waiting for broker {servers}")
        log.info(
            "connecting to %s",
            servers,
            extra=fields(action=Event.WAITING, message_id=Event.WAITING),
        )

    def _on_connected(self, up: Connected) -> None:
        if up.resumed:
            log.info(
                "broker back (%s); full resync",
                up.url,
                extra=fields(action=Event.BROKER_BACK, message_id=Event.BROKER_BACK),
            )
        else:
            log.info(
                "connected to %s",
                up.url,
                extra=fields(action=Event.BROKER_BACK, message_id=Event.BROKER_BACK),
            )
        self.board.broker_up()
        self.worker.attach(up.broker, Trigger.STARTUP if up.first else Trigger.RECONNECT)

    def _on_lost(self) -> None:
        if self._stopping or not self.worker.connected.is_set():
            return
        self.worker.detach()
        servers = ", ".join(self.config.nats.servers)
        self.board.broker_down(f"waiting for broker {servers}")
        log.warning(
            "broker lost (%s); reconnecting",
            servers,
            extra=fields(action=Event.BROKER_LOST, message_id=Event.BROKER_LOST),
        )

    def _on_advisory(self, subject: str, payload: bytes) -> None:
        stream = advisories.stream_of(subject, payload)
        if stream is not None:
            self.worker.advisory(stream)

    def _on_client_error(self, text: str) -> None:
        log.warning(text, extra=fields(action=Event.FAILED, message_id=Event.FAILED))

    # --- systemd watchdog -----------------------------------------------------------------

    async def watchdog_task(self, period: float) -> None:
        """Ping while the loop runs (this task runs at all) AND the worker is
        not stuck in one pass past its deadline. A broker that is down is not
        a wedge: the worker then waits idle, and requests have timeouts."""
        withheld = False
        while True:
            limit = self.config.watchdog.pass_deadline + self.config.nats.request_timeout
            busy = self.worker.busy_since
            if busy is None or time.monotonic() - busy < limit:
                self.notifier.watchdog()
                withheld = False
            elif not withheld:
                withheld = True
                log.error(
                    "worker stuck in one pass for %.0fs (limit %.0fs); withholding watchdog "
                    "pings so systemd restarts the daemon",
                    time.monotonic() - busy,
                    limit,
                )
            await asyncio.sleep(period)

    async def extend_start_task(self) -> None:
        """Until READY, keep systemd's start timeout from killing a start that
        is waiting for the broker (it stays 'activating' with a STATUS line)."""
        while not self.notifier.ready_sent:
            self.notifier.extend_timeout(EXTEND_EVERY * 3)
            await asyncio.sleep(EXTEND_EVERY)

    # --- signals --------------------------------------------------------------------------

    def request_reload(self) -> None:
        """SIGHUP: only a flag; the reload task does the work."""
        self._reload_wanted.set()

    async def reload_task(self) -> None:
        """Serve SIGHUPs one at a time; several before one is served make one reload."""
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            await self.reload()

    async def reload(self) -> None:
        # Before the first READY=1 a reload only swaps the config: READY must
        # keep meaning "every declared resource exists".
        running = self.notifier.ready_sent
        if running:
            self.notifier.reloading()
        path = self.config.path
        problems: list[str] = []
        try:
            # Never on the loop: a FIFO or a hung file system would freeze
            # signals, pings and healing along with it.
            config = await bounded(
                in_thread(lambda: load(path), name="config-reader"),
                RELOAD_READ_TIMEOUT,
                what=f"reading {path}",
            )
        except ConfigError as exc:
            problems = exc.problems
        except TimeoutError as exc:
            problems = [f"{exc} (a FIFO or a hung file system?)"]
        except Exception as exc:  # a bug in loading: the running config is still good
            problems = [f"internal error: {type(exc).__name__}: {exc}"]
        if problems:
            log.error(
                "reload refused, still running the previous config: %s",
                " | ".join(problems),
                extra=fields(
                    action=Event.RELOAD_FAILED,
                    message_id=Event.RELOAD_FAILED,
                    trigger=Trigger.RELOAD,
                ),
            )
            if running:
                self.notifier.ready(self.board.line())
            return
        self.config = config
        self.link.reconfigure(config.nats, advisories=config.watchdog.advisories)
        if self._timer is not None:
            self._timer.reschedule(
                interval=config.watchdog.resync_interval, jitter=config.watchdog.resync_jitter
            )
        self._reload_after_pass = self.worker.passes + (
            1 if self.worker.busy_since is not None else 0
        )
        self._reload_ready_due = running
        self.worker.reload(config)
        log.info(
            "reloaded %s: %d resources",
            config.path,
            len(config.resources),
            extra=fields(action=Event.RELOADED, message_id=Event.RELOADED, trigger=Trigger.RELOAD),
        )
        if not self.worker.connected.is_set() and self._reload_ready_due:
            self._reload_ready_due = False
            self.notifier.ready(self.board.line())

    def wedge(self) -> None:
        log.warning("test hook: wedging the worker")
        self.worker.wedge = asyncio.Event()

    # --- the whole life -------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        if os.environ.get(TEST_HOOKS_ENV) == "1":
            loop.add_signal_handler(signal.SIGUSR2, self.wedge)
        log.info(
            "starting: %d resources from %s",
            len(self.config.resources),
            self.config.path,
            extra=fields(action=Event.STARTED, message_id=Event.STARTED),
        )
        # These live until shutdown; any of them ending on its own is a bug.
        forever = [
            asyncio.create_task(self.link.run(), name="connection"),
            asyncio.create_task(self.worker.run(), name="worker"),
            asyncio.create_task(self.reload_task(), name="reload"),
        ]
        period = watchdog_period()
        if period is not None:
            forever.append(asyncio.create_task(self.watchdog_task(period), name="watchdog"))
        # This one ends by itself once READY=1 is sent.
        starting = asyncio.create_task(self.extend_start_task(), name="extend-start")
        w = self.config.watchdog
        self._timer = ResyncTimer(
            lambda: self.worker.queue.mark_all(Trigger.RESYNC),
            interval=w.resync_interval,
            jitter=w.resync_jitter,
        )
        self._timer.start()
        stop = asyncio.create_task(self.stop_requested.wait(), name="stop")
        done, _ = await asyncio.wait([stop, *forever], return_when=asyncio.FIRST_COMPLETED)
        code = exitcodes.OK
        for task in done:
            if task is not stop:
                code = exitcodes.INTERNAL
                exc = task.exception() if not task.cancelled() else None
                log.error("task %s ended unexpectedly: %r", task.get_name(), exc)
        await self.shutdown([*forever, starting])
        return code

    async def shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        self._stopping = True
        self.notifier.stopping()
        log.info("stopping", extra=fields(action=Event.STOPPING, message_id=Event.STOPPING))
        if self._timer is not None:
            self._timer.stop()
        deadline = time.monotonic() + self.config.watchdog.stop_timeout
        # Let a pass in flight finish (its writes are single requests), bounded.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self.worker.idle.wait(), max(0.0, deadline - time.monotonic() - 1)
            )
        for task in tasks:
            task.cancel()
        _, stuck = await asyncio.wait(tasks, timeout=max(0.1, deadline - time.monotonic() - 1))
        if stuck:
            names = ", ".join(t.get_name() for t in stuck)
            log.error("tasks still running at the stop deadline: %s; exiting anyway", names)
            logging.shutdown()
            os._exit(exitcodes.OK)
        await self.link.close()


def run_daemon(path: str) -> int:
    """Entry point of `kanade-watchdog run`; returns the exit code."""
    try:
        config = load(path)
    except ConfigError as exc:
        for line in exc.problems:
            log.error("config error: %s", line)  # noqa: TRY400 - one line each, no traceback
        return exitcodes.CONFIG
    try:
        return asyncio.run(Daemon(config).run())
    except (KeyboardInterrupt, asyncio.CancelledError):  # a second Ctrl-C during shutdown
        return exitcodes.OK
    except Exception as exc:
        print(f"internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exitcodes.INTERNAL
