"""`kanade-watchdog run`: the supervisor. Start-up, a main loop, shutdown.

Named tasks run for the daemon's whole life: `connection` (`broker.link`:
one live client, advisories), `worker` (the only reconciler), `watchdog`
(`report.systemd` pings while `health()` says the worker makes progress),
plus `extend-start` until READY and the resync timer, which only marks
work. Any of them ending on its own is a bug: it is logged at once with its
traceback and the daemon exits 70, so systemd restarts it.

Signal handlers only set flags; the main loop does the work: SIGHUP reads
and validates the file in a thread of its own (a FIFO or a hung file
system cannot freeze the loop) and swaps the config, an invalid file keeps
the old one; SIGTERM/SIGINT stop within `stop_timeout`, and a stop that
misses it exits 1 (never a success it was not). `RunState` says where the
daemon is; the reporters hear of each change.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, Protocol

from kanade_watchdog.broker.aio import bounded, in_thread
from kanade_watchdog.broker.link import Connected, Link
from kanade_watchdog.config.load import load
from kanade_watchdog.core.ports import Reporter, Reporters
from kanade_watchdog.core.reports import BrokerState, LinkState, Reloaded, RunState
from kanade_watchdog.daemon import advisories
from kanade_watchdog.daemon.resync import ResyncTimer
from kanade_watchdog.daemon.tasks import Tasks
from kanade_watchdog.daemon.worker import Worker
from kanade_watchdog.model import exitcodes
from kanade_watchdog.model.errors import ConfigError
from kanade_watchdog.model.events import Event, Trigger
from kanade_watchdog.model.settings import Config, NatsSettings
from kanade_watchdog.report.http import Endpoint, EndpointError
from kanade_watchdog.report.logs import fields
from kanade_watchdog.report.meter import MetricsReporter
from kanade_watchdog.report.metrics import Metrics
from kanade_watchdog.report.outcomes import OutcomeLog
from kanade_watchdog.report.status import StatusBoard
from kanade_watchdog.report.systemd import Health, Notifier, SystemdReporter, watchdog_period

log = logging.getLogger("kanade_watchdog")

RELOAD_READ_TIMEOUT = 10.0  # a config file that takes longer to read is given up on
STOP_MARGIN = 1.0  # of stop_timeout, kept for cancelling tasks and closing the connection
READY_INTERVALS = 3  # /readyz: a full pass within this many resync intervals (as the alert)


class Connection(Protocol):
    """What the daemon needs of its connection (`broker.link.Link`)."""

    async def run(self) -> None: ...

    def reconfigure(self, settings: NatsSettings, *, advisories: bool) -> None: ...

    async def close(self) -> None: ...


class ConnectionFactory(Protocol):
    def __call__(
        self,
        settings: NatsSettings,
        *,
        advisories: bool,
        on_connecting: Callable[[str], None],
        on_connected: Callable[[Connected], None],
        on_lost: Callable[[], None],
        on_advisory: Callable[[str, bytes], None],
        on_error: Callable[[str], None],
    ) -> Connection: ...


class Daemon:
    """`connect` builds the connection (tests hand in one with a fake broker);
    `clock` is what `health()` measures a stuck pass with; `watchdog` is the
    ping period (default: from WATCHDOG_USEC, None outside systemd);
    `reporters` hear everything after the log, the board, systemd and the
    metrics. With `[http] listen` the daemon serves /metrics, /healthz,
    /readyz and /status (`report.http`) for as long as it runs."""

    def __init__(
        self,
        config: Config,
        *,
        notifier: Notifier | None = None,
        connect: ConnectionFactory = Link,
        clock: Callable[[], float] = time.monotonic,
        watchdog: float | None = None,
        reporters: Sequence[Reporter] = (),
    ) -> None:
        self.config = config
        self.state = RunState.STARTING
        self.clock = clock
        self.board = StatusBoard(config.resources)
        self.systemd = SystemdReporter(notifier or Notifier(), self.board)
        self.endpoint: Endpoint | None = None
        extra = list(reporters)
        if config.http.host is not None:
            metrics = Metrics()
            extra.insert(0, MetricsReporter(metrics))
            self.endpoint = Endpoint(
                config.http.host,
                config.http.port,
                metrics=metrics,
                healthy=lambda: self.health().ok,
                ready=self.ready,
                status=self.status,
            )
        # The board first: the others read it.
        self.reporters = Reporters(self.board, OutcomeLog(clock=clock), self.systemd, *extra)
        self.worker = Worker(config, reporter=self.reporters, clock=clock)
        self.link = connect(
            config.nats,
            advisories=config.watchdog.advisories,
            on_connecting=self._on_connecting,
            on_connected=self._on_connected,
            on_lost=self._on_lost,
            on_advisory=self._on_advisory,
            on_error=self._on_client_error,
        )
        if isinstance(self.link, Link):
            self.link.consumer_advisories = bool(config.consumers)
        self.watchdog = watchdog if watchdog is not None else watchdog_period()
        self.abandoned: list[str] = []  # tasks that ignored their cancellation at stop
        self._timer: ResyncTimer | None = None
        self._stop_wanted = False
        self._reload_wanted = False
        self.tasks = Tasks(on_failure=self._task_failed)
        self._wake = asyncio.Event()  # any flag, or a task's death
        self._interrupt = asyncio.Event()  # a stop, or a task's death: cut a reload short

    # --- flags: all a signal handler does ---------------------------------------------

    def request_stop(self) -> None:
        self._stop_wanted = True
        self._interrupt.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_wanted = True
        self._wake.set()

    def _set_state(self, state: RunState) -> None:
        self.state = state
        self.reporters.run_state(state)

    # --- health, as systemd and the HTTP endpoint ask ------------------------------------

    def health(self) -> Health:
        """The worker makes progress unless one pass has run past its deadline
        plus one request's timeout (a request the deadline could not cancel)."""
        limit = self.config.watchdog.pass_deadline + self.config.nats.request_timeout
        stuck = self.worker.stuck_for(self.clock())
        return Health(ok=stuck < limit, stuck_for=stuck, limit=limit)

    def ready(self) -> tuple[bool, str]:
        """Every declared resource exists and a full pass read the broker
        within the last READY_INTERVALS resync intervals (else why not)."""
        max_age = READY_INTERVALS * self.config.watchdog.resync_interval
        return self.board.ready(now=self.clock(), max_age=max_age)

    def status(self) -> str:
        """The `check --json` document, from what the daemon last saw."""
        return self.board.check_json(config=self.config.path, ignore=self.config.ignore)

    # --- connection (`link` calls these) ---------------------------------------------------

    def _on_connecting(self, servers: str) -> None:
        self.reporters.broker(BrokerState(LinkState.CONNECTING, servers))

    def _on_connected(self, up: Connected) -> None:
        servers = ", ".join(self.config.nats.servers)
        state = BrokerState(
            LinkState.UP,
            servers,
            url=up.url,
            server_version=up.server_version,
            first=up.first,
            resumed=up.resumed,
        )
        self.reporters.broker(state)
        self.worker.attach(up.broker, Trigger.STARTUP if up.first else Trigger.RECONNECT)

    def _on_lost(self) -> None:
        if self.state is RunState.STOPPING or not self.worker.attached:
            return
        self.worker.detach()
        self.reporters.broker(BrokerState(LinkState.LOST, ", ".join(self.config.nats.servers)))

    def _on_advisory(self, subject: str, payload: bytes) -> None:
        action = advisories.stream_action(subject, payload)
        if action is not None:
            stream, verb = action
            self.worker.advisory(stream, created=verb == "create")
        elif (named := advisories.consumer_action(subject, payload)) is not None:
            # Applications' ephemeral consumers come and go: only ours mark work.
            name, verb = named
            declared = {c.name: c.stream for c in self.config.consumers}
            if name in declared:
                self.worker.consumer_advisory(name, declared[name], created=verb == "create")

    def _on_client_error(self, text: str) -> None:
        log.warning(text, extra=fields(action=Event.FAILED, message_id=Event.FAILED))

    # --- reload ---------------------------------------------------------------------------

    async def reload(self) -> None:
        self._set_state(RunState.RELOADING)
        try:
            await self._reload()
        finally:
            if self.state is RunState.RELOADING:
                self._set_state(RunState.RUNNING)

    async def _reload(self) -> None:
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
            self.reporters.reloaded(Reloaded(path, ok=False, problems=tuple(problems)))
            return
        if config.http != self.config.http:
            log.warning(
                "[http] listen changed; the endpoint keeps serving %s until a restart",
                self.config.http.where if self.config.http.host else "nothing",
            )
        self.config = replace(config, http=self.config.http)
        if isinstance(self.link, Link):
            self.link.consumer_advisories = bool(config.consumers)
        self.link.reconfigure(config.nats, advisories=config.watchdog.advisories)
        if self._timer is not None:
            self._timer.reschedule(
                interval=config.watchdog.resync_interval, jitter=config.watchdog.resync_jitter
            )
        self.worker.reload(config)
        self.reporters.declared(config.resources, config.consumers)
        self.reporters.reloaded(
            Reloaded(
                config.path,
                ok=True,
                resources=len(config.resources),
                generation=self.worker.generation,
                connected=self.worker.attached,
            )
        )

    # --- the whole life -------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        for sig in handled[:2]:
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            return await self._life()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)

    async def _life(self) -> int:
        self._set_state(RunState.STARTING)
        log.info(
            "starting: %d resources from %s",
            len(self.config.resources),
            self.config.path,
            extra=fields(action=Event.STARTED, message_id=Event.STARTED),
        )
        self.reporters.declared(self.config.resources, self.config.consumers)
        if self.endpoint is not None:
            try:
                await self.endpoint.start()
            except EndpointError as exc:
                log.error("cannot serve HTTP: %s", exc)  # noqa: TRY400 - one line, no traceback
                return exitcodes.FAILURE
        # These live until shutdown; any of them ending on its own is a bug.
        self.tasks.start(self.link.run(), "connection")
        self.tasks.start(self.worker.run(), "worker")
        if self.watchdog is not None:
            self.tasks.start(self.systemd.keep_alive(self.watchdog, self.health), "watchdog")
        # This one ends by itself once READY=1 is sent.
        self.tasks.start(self.systemd.extend_start(), "extend-start", ends=True)
        w = self.config.watchdog
        self._timer = ResyncTimer(
            lambda: self.worker.mark_all(Trigger.RESYNC),
            interval=w.resync_interval,
            jitter=w.resync_jitter,
        )
        self._timer.start()
        self._set_state(RunState.RUNNING)
        code = await self._main_loop()
        return max(code, await self.shutdown())

    async def _main_loop(self) -> int:
        while True:
            if self.tasks.failed is not None:
                return exitcodes.INTERNAL
            if self._stop_wanted:
                return exitcodes.OK
            if self._reload_wanted:
                self._reload_wanted = False
                await self._unless_interrupted(self.reload(), "reload")
                continue
            self._wake.clear()
            await self._wake.wait()

    async def _unless_interrupted(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run `work` as a guarded task to its end, unless a stop or a task's
        death comes first (then it is cancelled)."""
        job = self.tasks.start(work, name, ends=True)
        interrupted = asyncio.create_task(self._interrupt.wait())
        try:
            await asyncio.wait({job, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupted.cancel()
        if not job.done():
            job.cancel()
            await asyncio.wait({job})
            log.info("%s cut short by the stop", name)

    def _task_failed(self) -> None:
        self._interrupt.set()
        self._wake.set()

    async def shutdown(self) -> int:
        """Stop within stop_timeout: let the pass in flight finish (its writes
        are single requests), cancel the tasks, close the endpoint and the
        connection. Returns OK, or FAILURE when a task would not end in time."""
        deadline = time.monotonic() + self.config.watchdog.stop_timeout
        self._set_state(RunState.STOPPING)
        log.info("stopping", extra=fields(action=Event.STOPPING, message_id=Event.STOPPING))
        if self._timer is not None:
            self._timer.stop()
        await self.worker.wait_idle(within=max(0.0, deadline - time.monotonic() - STOP_MARGIN))
        wait = max(0.1, deadline - time.monotonic() - STOP_MARGIN)
        self.abandoned = await self.tasks.stop(within=wait)
        code = exitcodes.OK
        if self.abandoned:
            log.error(
                "tasks still running at the stop deadline: %s; exiting with status %d",
                ", ".join(self.abandoned),
                exitcodes.FAILURE,
            )
            code = exitcodes.FAILURE
        if self.endpoint is not None:
            await self.endpoint.stop()
        await self.link.close()
        return code


def run_daemon(path: str) -> int:
    """Entry point of `kanade-watchdog run`; returns the exit code."""
    try:
        config = load(path)
    except ConfigError as exc:
        for line in exc.problems:
            log.error("config error: %s", line)  # noqa: TRY400 - one line each, no traceback
        return exitcodes.CONFIG
    daemon = Daemon(config)
    with asyncio.Runner() as runner:
        try:
            code = runner.run(daemon.run())
        except (KeyboardInterrupt, asyncio.CancelledError):  # a second Ctrl-C during shutdown
            return exitcodes.OK
        except Exception as exc:
            log.exception("internal error: %s: %s", type(exc).__name__, exc)  # noqa: TRY401
            # (the one line names the error; its traceback goes to the journal only)
            return exitcodes.INTERNAL
        if daemon.abandoned:
            # Closing the loop would wait for tasks that ignore cancellation:
            # leave without it, with the status the stop earned.
            logging.shutdown()
            os._exit(code)
    return code
