"""The daemon's reconcile machinery in-process: `backoff.Backoff` on an
injected clock (no sleeping), `worker.WorkQueue` coalescing, and
`worker.Worker` driving a real nats-server through `broker.Broker`.

The subprocess-level behaviour (signals, reconnects, advisories) is in
`test_daemon`; here the pieces are checked one at a time, with time under
the test's control wherever the code lets it be injected.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import nats
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from kanade_watchdog.broker.api import Broker
from kanade_watchdog.config.load import parse
from kanade_watchdog.core import plan
from kanade_watchdog.core.plan import Action, Change, Decision, Observed
from kanade_watchdog.core.ports import Reporters
from kanade_watchdog.core.result import Result
from kanade_watchdog.core.serverinfo import ServerInfo
from kanade_watchdog.daemon.backoff import Backoff
from kanade_watchdog.daemon.books import REVERIFY_AFTER
from kanade_watchdog.daemon.guard import WRITE_WINDOW, WRITES_PER_WINDOW
from kanade_watchdog.daemon.queue import WorkQueue
from kanade_watchdog.daemon.worker import Decide, Worker
from kanade_watchdog.model.events import Trigger
from kanade_watchdog.model.resources import Resource
from kanade_watchdog.model.settings import Config
from kanade_watchdog.report.status import StatusBoard
from tests.capture import Capture
from tests.fakebroker import FakeBroker
from tests.helpers_streams import stream_names
from tests.natsserver import NatsServer


class FakeClock:
    """A monotonic clock that only moves when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def backoff(
    clock: FakeClock, *, initial: float = 0.1, maximum: float = 300.0, permanent: float = 300.0
) -> Backoff:
    return Backoff(initial=initial, maximum=maximum, permanent=permanent, clock=clock)


# --- Backoff --------------------------------------------------------------------------


def test_transient_delays_double_per_attempt_plus_bounded_jitter() -> None:
    """Transient failure n waits initial * 2**(n-1) plus a jitter of at most
    `initial`: 0.1-0.2 s, 0.2-0.3 s, 0.4-0.5 s... for initial 100ms."""
    b = backoff(FakeClock())
    for n in range(1, 11):
        delay = b.failed("RESULTS", transient=True)
        base = 0.1 * 2 ** (n - 1)
        assert base <= delay <= base + 0.1, (n, delay)
        assert b.attempts("RESULTS") == n


def test_jitter_spreads_the_first_retry() -> None:
    """Fifty resources failing at the same instant do not all retry at the same
    instant: their first delays differ, all within [initial, 2 * initial]."""
    random.seed(1234)
    clock = FakeClock()
    delays = [backoff(clock).failed("X", transient=True) for _ in range(50)]
    assert all(0.1 <= d <= 0.2 for d in delays)
    assert len({round(d, 6) for d in delays}) >= 40


def test_transient_delay_is_capped_at_backoff_max() -> None:
    """However many times a resource fails, it never waits longer than backoff_max."""
    b = backoff(FakeClock(), maximum=5.0)
    delays = [b.failed("KV_jobs", transient=True) for _ in range(200)]
    assert max(delays) <= 5.0
    assert delays[-1] == 5.0
    assert b.attempts("KV_jobs") == 200


@settings(max_examples=200, deadline=None)
@given(
    initial=st.floats(min_value=0.001, max_value=10.0),
    maximum=st.floats(min_value=0.001, max_value=3600.0),
    failures=st.integers(min_value=1, max_value=80),
)
def test_transient_delay_stays_within_its_bounds(
    initial: float, maximum: float, failures: int
) -> None:
    """For any settings and failure count, the delay is never negative, never
    over backoff_max, and never under min(initial * 2**(n-1), backoff_max)."""
    b = backoff(FakeClock(), initial=initial, maximum=maximum)
    for n in range(1, failures + 1):
        delay = b.failed("S", transient=True)
        assert 0 <= delay <= maximum
        assert delay >= min(initial * 2 ** (n - 1), maximum) * (1 - 1e-9)


def test_success_resets_the_count() -> None:
    """After a success the next failure starts again from the first delay, and
    nothing waits meanwhile."""
    clock = FakeClock()
    b = backoff(clock)
    for _ in range(8):
        b.failed("EXEC", transient=True)
    assert b.attempts("EXEC") == 8
    b.succeeded("EXEC")
    assert b.attempts("EXEC") == 0
    assert b.due("EXEC")
    assert b.next_due() is None
    assert b.waiting() == []
    assert 0.1 <= b.failed("EXEC", transient=True) <= 0.2


def test_permanent_failures_keep_a_steady_slow_pace() -> None:
    """A permanent error waits permanent_retry plus at most 10% every time: the
    pace never grows and never shrinks."""
    b = backoff(FakeClock(), permanent=300.0)
    delays = [b.failed("BIG", transient=False) for _ in range(30)]
    assert all(300.0 <= d <= 330.0 for d in delays), delays
    assert b.attempts("BIG") == 30


def test_changing_failure_kind_restarts_the_count() -> None:
    """A transient failure after permanent ones (or the reverse) starts its own
    sequence at attempt 1 rather than inheriting the other's count."""
    b = backoff(FakeClock())
    for _ in range(5):
        b.failed("S", transient=True)
    assert 300.0 <= b.failed("S", transient=False) <= 330.0
    assert b.attempts("S") == 1
    assert 0.1 <= b.failed("S", transient=True) <= 0.2
    assert b.attempts("S") == 1


def test_next_due_and_due_follow_the_injected_clock() -> None:
    """`next_due` is the time to the earliest retry on the injected clock, never
    negative; `due` and `pop_due` turn true exactly when that time comes, and
    a due key stays recorded until it succeeds."""
    clock = FakeClock()
    b = backoff(clock, permanent=10.0)
    assert b.next_due() is None
    slow = b.failed("SLOW", transient=False)  # 10-11 s
    fast = b.failed("FAST", transient=True)  # 0.1-0.2 s
    assert b.next_due() == pytest.approx(fast)
    assert not b.due("FAST")
    assert not b.due("SLOW")
    assert b.due("OTHER")  # never failed: always due
    assert b.pop_due() == []

    start = clock.now
    clock.advance(fast / 2)
    assert b.next_due() == pytest.approx(fast / 2)
    clock.now = start + fast  # exactly the due time
    assert b.due("FAST")
    assert not b.due("SLOW")
    assert b.pop_due() == ["FAST"]
    assert b.pop_due() == ["FAST"]  # still recorded
    assert b.next_due() == 0.0

    clock.advance(100.0)
    assert b.next_due() == 0.0  # overdue is "now", not negative
    assert sorted(b.pop_due()) == ["FAST", "SLOW"]
    b.succeeded("FAST")
    assert b.waiting() == ["SLOW"]
    assert slow >= 10.0


def test_keys_back_off_independently() -> None:
    """One resource's failures do not delay another's retries."""
    clock = FakeClock()
    b = backoff(clock)
    for _ in range(10):
        b.failed("A", transient=True)
    first_b = b.failed("B", transient=True)
    assert 0.1 <= first_b <= 0.2
    clock.advance(first_b)
    assert b.due("B")
    assert not b.due("A")


# --- WorkQueue ------------------------------------------------------------------------


def test_marks_for_one_stream_coalesce_into_one_entry() -> None:
    """100 advisory marks for one stream become one entry of one batch; the
    queue still counts 100 marks, and the next take is empty."""
    q = WorkQueue()
    for _ in range(100):
        q.mark("RESULTS", Trigger.ADVISORY)
    batch = q.take()
    assert q.marks == 100
    assert batch.full is None
    assert batch.streams == {"RESULTS": Trigger.ADVISORY}
    assert not q.take()


def test_full_and_stream_marks_merge_into_one_batch() -> None:
    """Full marks and stream marks made before a take come out as one batch:
    the first full trigger and each stream's first trigger are kept."""
    q = WorkQueue()
    q.mark("A", Trigger.ADVISORY)
    q.mark_all(Trigger.RESYNC)
    q.mark_all(Trigger.RECONNECT)
    q.mark("B", Trigger.RETRY)
    q.mark("A", Trigger.RETRY)
    batch = q.take()
    assert batch
    assert batch.full is Trigger.RESYNC
    assert batch.streams == {"A": Trigger.ADVISORY, "B": Trigger.RETRY}
    assert q.marks == 5
    assert not q.take()


def test_a_batch_keeps_when_each_trigger_first_arrived() -> None:
    """Heal latency runs from the trigger's arrival: a batch keeps the time of
    each stream's first mark and of the first "everything" mark (on the
    queue's injected clock); a stream marked only by "everything" arrived
    with it."""
    clock = FakeClock()
    q = WorkQueue(clock)
    q.mark("A", Trigger.ADVISORY)
    clock.advance(1.0)
    q.mark_all(Trigger.RESYNC)
    clock.advance(1.0)
    q.mark("A", Trigger.RETRY)
    q.mark("B", Trigger.VERIFY)
    clock.advance(1.0)
    q.mark_all(Trigger.RECONNECT)
    batch = q.take()
    assert (batch.arrived("A"), batch.arrived("B"), batch.arrived("C")) == (1000.0, 1002.0, 1001.0)
    assert batch.full is Trigger.RESYNC


async def test_wait_wakes_on_a_mark_and_times_out_without_one() -> None:
    """`wait` returns when something is marked (even with no time limit: it
    returns without one turn of the loop passing), and returns quietly (no
    exception) after `at_most` seconds when nothing is; taking re-arms it."""
    q = WorkQueue()
    started = time.monotonic()
    await q.wait(0.03)
    assert time.monotonic() - started >= 0.025

    q.mark_all(Trigger.STARTUP)
    waiting = asyncio.ensure_future(q.wait(None))
    await asyncio.sleep(0)
    assert waiting.done()

    q.take()
    waiting = asyncio.ensure_future(q.wait(None))
    await asyncio.sleep(0)
    assert not waiting.done()  # re-armed: nothing marked since the take
    q.mark("EXEC", Trigger.ADVISORY)
    await asyncio.wait_for(waiting, 1.0)


async def test_a_mark_from_another_task_wakes_the_waiter() -> None:
    """A mark made while the worker waits (an advisory callback) wakes it: the
    waiter is still waiting before the mark, and done right after it."""
    q = WorkQueue()
    waiting = asyncio.ensure_future(q.wait(None))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiting.done()
    asyncio.get_running_loop().call_soon(q.mark, "EXEC", Trigger.ADVISORY)
    await asyncio.wait_for(waiting, 1.0)
    assert q.take().streams == {"EXEC": Trigger.ADVISORY}


# --- Worker against a real broker -----------------------------------------------------------


def make_config(url: str, streams: dict[str, dict[str, Any]], **watchdog: Any) -> Config:
    """A validated Config of a few plain streams, through the real parser."""
    document: dict[str, Any] = {
        "nats": {"servers": [url], "request_timeout": "2s"},
        "watchdog": {"backoff_initial": "50ms", "backoff_max": "1s", **watchdog},
        "streams": streams,
    }
    return parse(document, "test.toml")


SMALL: dict[str, dict[str, Any]] = {
    "ALPHA": {"subjects": ["alpha.>"], "max_age": "1d"},
    "BETA": {"subjects": ["beta.>"]},
    "GAMMA": {"subjects": ["gamma.>"], "max_msgs_per_subject": 3},
}


@pytest.fixture
async def nc(server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(server.url)
    yield client
    await client.close()


@dataclass
class Watched:
    """A Worker reporting to a status board and a capture of its pass reports."""

    worker: Worker
    board: StatusBoard
    seen: Capture


def watched(config: Config, **kwargs: Any) -> Watched:
    board, seen = StatusBoard(config.resources), Capture()
    return Watched(Worker(config, reporter=Reporters(board, seen), **kwargs), board, seen)


class Running:
    """A Worker whose `run()` loop is a task of the test's event loop."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.task = asyncio.create_task(worker.run(), name="worker")

    async def settle(self, *, within: float = 5.0) -> None:
        """Until no pass runs and none starts for 30 ms: a pending mark would
        have woken the worker by then."""
        deadline = time.monotonic() + within
        while True:
            passes = self.worker.passes
            await asyncio.sleep(0.03)
            if not self.worker.busy and self.worker.passes == passes:
                return
            assert time.monotonic() < deadline, "worker never went idle"

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
def running() -> Iterator[Callable[[Worker], Running]]:
    started: list[Running] = []

    def start(worker: Worker) -> Running:
        run = Running(worker)
        started.append(run)
        return run

    yield start
    for run in started:
        run.task.cancel()


async def test_full_pass_creates_what_is_missing_and_a_second_writes_nothing(
    server: NatsServer, nc: Client, running: Callable[[Worker], Running]
) -> None:
    """A startup mark creates the three declared streams; a resync mark on the
    converged broker is one LIST request and no write."""
    config = make_config(server.url, SMALL)
    w = watched(config)
    worker, board = w.worker, w.board
    broker = Broker(nc, timeout=2.0)
    run = running(worker)
    worker.attach(broker)
    worker.mark_all(Trigger.STARTUP)
    await run.settle()
    assert await stream_names(nc) == {"ALPHA", "BETA", "GAMMA"}
    assert broker.requests["create"] == 3
    assert board.all_present()
    assert board.line().startswith("3/3 in sync")

    before = dict(broker.requests)
    worker.mark_all(Trigger.RESYNC)
    await run.settle()
    delta = {k: v - before.get(k, 0) for k, v in broker.requests.items()}
    assert {k: v for k, v in delta.items() if v} == {"list": 1}


async def test_a_burst_of_marks_during_passes_becomes_few_passes(
    server: NatsServer, nc: Client, running: Callable[[Worker], Running]
) -> None:
    """100 advisory marks arriving one per loop turn while passes run are
    served by far fewer passes (each pass takes whatever piled up)."""
    config = make_config(server.url, SMALL)
    worker = watched(config).worker
    broker = Broker(nc, timeout=2.0)
    run = running(worker)
    worker.attach(broker)
    worker.mark_all(Trigger.STARTUP)
    await run.settle()

    passes, marks = worker.passes, worker.queue.marks
    infos = broker.requests["info"]
    for i in range(100):
        worker.mark(("ALPHA", "BETA", "GAMMA")[i % 3], Trigger.ADVISORY)
        await asyncio.sleep(0)
    await run.settle()
    burst_passes = worker.passes - passes
    assert worker.queue.marks - marks == 100
    assert 1 <= burst_passes <= 20, burst_passes
    assert broker.requests["info"] - infos <= 3 * burst_passes
    assert broker.requests["create"] == 3  # nothing to write: all in sync


async def test_a_detached_worker_runs_no_pass(
    server: NatsServer, nc: Client, running: Callable[[Worker], Running]
) -> None:
    """While the broker is away (detached) marks cause no pass; once attached a
    mark is served."""
    config = make_config(server.url, SMALL)
    worker = watched(config).worker
    run = running(worker)
    worker.mark_all(Trigger.STARTUP)
    worker.mark("ALPHA", Trigger.ADVISORY)
    await asyncio.sleep(0.05)
    assert worker.passes == 0
    assert await stream_names(nc) == set()

    worker.attach(Broker(nc, timeout=2.0))
    worker.mark_all(Trigger.RECONNECT)
    await run.settle()
    assert worker.passes >= 1
    assert await stream_names(nc) == {"ALPHA", "BETA", "GAMMA"}


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A broker whose file store can reserve at most 200MB."""
    srv = NatsServer(tmp_path, jetstream_conf="max_file_store: 200MB", name="small").start()
    yield srv
    srv.stop()


async def test_full_passes_skip_a_permanently_failing_resource_until_it_is_due(
    small_server: NatsServer, running: Callable[[Worker], Running]
) -> None:
    """A stream that cannot fit (10047, permanent) is tried once; resync passes
    on the injected clock skip it until permanent_retry has passed, then it is
    tried again; the other streams are served by every pass meanwhile."""
    nc = await nats.connect(small_server.url)
    try:
        streams = {**SMALL, "BIG": {"subjects": ["big.>"], "max_bytes": "1GiB"}}
        config = make_config(small_server.url, streams, permanent_retry="1h")
        clock = FakeClock()
        w = watched(config, clock=clock)
        worker = w.worker
        broker = Broker(nc, timeout=2.0)
        run = running(worker)
        worker.attach(broker)
        worker.mark_all(Trigger.STARTUP)
        await run.settle()
        assert await stream_names(nc) == {"ALPHA", "BETA", "GAMMA"}
        assert broker.requests["create"] == 4  # three created, BIG refused
        assert worker.backoff.waiting() == ["BIG"]
        assert "1 failing: BIG" in w.board.line()
        [failed] = w.seen.failed("BIG")
        assert not failed.transient
        assert failed.code == "10047"

        for _ in range(5):  # resyncs within the hour: BIG is not asked again
            clock.advance(60.0)
            worker.mark_all(Trigger.RESYNC)
            await run.settle()
        assert broker.requests["create"] == 4
        assert broker.requests["list"] == 6

        await nc.request("$JS.API.STREAM.DELETE.BETA", b"")
        worker.mark("BETA", Trigger.ADVISORY)  # the others still heal at once
        await run.settle()
        assert "BETA" in await stream_names(nc)
        assert broker.requests["create"] == 5

        clock.advance(3600.0 * 1.1)  # past permanent_retry plus its 10% spread
        worker.mark_all(Trigger.RESYNC)
        await run.settle()
        assert broker.requests["create"] == 6  # BIG tried again, once
        assert worker.backoff.attempts("BIG") == 2
    finally:
        await nc.close()


# --- a second look shortly after a write --------------------------------------------------

STEP = REVERIFY_AFTER + 0.01  # past a re-check's due time, whatever the float rounding


async def until(check: Callable[[], Awaitable[bool]], *, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_a_stream_deleted_right_after_its_create_is_healed_by_the_recheck(
    server: NatsServer, nc: Client, running: Callable[[Worker], Running]
) -> None:
    """With no advisory at all (the broker may drop the DELETED one), a stream
    deleted right after the worker created it is looked at again once
    REVERIFY_AFTER has passed on the injected clock, and re-created; the
    re-check is one-shot: once healed and looked at, nothing more is sent."""
    config = make_config(server.url, SMALL)
    clock = FakeClock()
    worker = watched(config, clock=clock).worker
    broker = Broker(nc, timeout=2.0)
    run = running(worker)
    worker.attach(broker, Trigger.STARTUP)
    await until(lambda: stream_names_are(nc, {"ALPHA", "BETA", "GAMMA"}))
    await run.settle()
    await nc.request("$JS.API.STREAM.DELETE.ALPHA", b"")
    await asyncio.sleep(0.3)  # real time passes, the injected clock does not
    assert broker.requests["info"] == 0
    assert await stream_names(nc) == {"BETA", "GAMMA"}

    clock.advance(STEP)
    await until(lambda: stream_names_are(nc, {"ALPHA", "BETA", "GAMMA"}))
    await run.settle()
    assert broker.requests["create"] == 4
    assert broker.requests["info"] == 3  # one look at each stream written

    clock.advance(STEP)  # ALPHA's own re-check, after its second create
    await until(lambda: _requests_are(broker, "info", 4))
    clock.advance(10 * REVERIFY_AFTER)
    await asyncio.sleep(0.3)
    await run.settle()
    assert dict(broker.requests) == {"list": 1, "create": 4, "info": 4}


async def stream_names_are(nc: Client, names: set[str]) -> bool:
    return await stream_names(nc) == names


async def _requests_are(broker: Broker, verb: str, n: int) -> bool:
    return broker.requests[verb] == n


# --- a permanent failure whose cause changes --------------------------------------------

OVERLAP: dict[str, dict[str, Any]] = {
    "INVENTORY": {"subjects": ["inventory.>"]},
    "NOTIFICATIONS": {"subjects": ["notifications.>"]},
}


async def _widen_notifications(nc: Client, *subjects: str) -> None:
    info = json.loads((await nc.request("$JS.API.STREAM.INFO.NOTIFICATIONS", b"")).data)
    body = {**info["config"], "subjects": list(subjects)}
    answer = json.loads(
        (await nc.request("$JS.API.STREAM.UPDATE.NOTIFICATIONS", json.dumps(body).encode())).data
    )
    assert "error" not in answer, answer


async def _overlap_failure(
    server: NatsServer, nc: Client, running: Callable[[Worker], Running]
) -> tuple[Watched, Broker, Running]:
    """INVENTORY deleted and NOTIFICATIONS widened over inventory.> by another
    client; the worker's re-create of INVENTORY is refused (10065)."""
    config = make_config(server.url, OVERLAP, permanent_retry="1h")
    w = watched(config, clock=FakeClock())
    worker = w.worker
    broker = Broker(nc, timeout=2.0)
    run = running(worker)
    worker.attach(broker, Trigger.STARTUP)
    await until(lambda: stream_names_are(nc, {"INVENTORY", "NOTIFICATIONS"}))
    await run.settle()
    await nc.request("$JS.API.STREAM.DELETE.INVENTORY", b"")
    await _widen_notifications(nc, "notifications.>", "inventory.>")
    worker.mark("INVENTORY", Trigger.ADVISORY)
    await run.settle()
    assert worker.backoff.waiting() == ["INVENTORY"]
    assert "INVENTORY" not in await stream_names(nc)
    return w, broker, run


async def test_overlap_failure_names_the_declared_stream_and_heals_on_its_advisory(
    server: NatsServer,
    nc: Client,
    running: Callable[[Worker], Running],
) -> None:
    """The refused create says which declared stream overlaps (never 'a stream
    this config does not declare'), and the advisory for that stream brings
    the blocked one back at once: NOTIFICATIONS is reverted, INVENTORY
    created, with the injected clock nowhere near permanent_retry (1h)."""
    w, _, run = await _overlap_failure(server, nc, running)
    worker = w.worker
    [failed] = w.seen.failed("INVENTORY")
    text = str(failed.error)
    assert "overlap stream NOTIFICATIONS, which this config declares" in text
    assert "[notifications.>, inventory.>]" in text
    assert "does not declare" not in text
    assert (failed.transient, failed.code, failed.present) == (False, "10065", False)
    assert failed.trigger is Trigger.ADVISORY

    worker.advisory("NOTIFICATIONS")
    await until(lambda: stream_names_are(nc, {"INVENTORY", "NOTIFICATIONS"}))
    await run.settle()
    info = json.loads((await nc.request("$JS.API.STREAM.INFO.NOTIFICATIONS", b"")).data)
    assert info["config"]["subjects"] == ["notifications.>"]
    assert worker.backoff.waiting() == []
    assert w.board.line().startswith("2/2 in sync")
    assert w.seen.done(Result.CREATED, stream="INVENTORY")


async def test_overlap_with_an_undeclared_stream_names_it_and_a_resync_retries_once_gone(
    server: NatsServer,
    nc: Client,
    running: Callable[[Worker], Running],
) -> None:
    """A stream this config does not declare holding the subjects is named,
    with its subjects; resyncs skip the blocked resource while the overlap
    stands, and the first full pass after the other stream moved away
    retries it (permanent_retry, 1h, is nowhere near due)."""
    body = {"name": "FOREIGN", "subjects": ["inventory.eu.>"]}
    await nc.request("$JS.API.STREAM.CREATE.FOREIGN", json.dumps(body).encode())
    config = make_config(server.url, OVERLAP, permanent_retry="1h")
    w = watched(config, clock=FakeClock())
    worker = w.worker
    broker = Broker(nc, timeout=2.0)
    run = running(worker)
    worker.attach(broker, Trigger.STARTUP)
    await until(lambda: stream_names_are(nc, {"FOREIGN", "NOTIFICATIONS"}))
    await run.settle()
    assert "1 failing: INVENTORY" in w.board.line()
    [failed] = w.seen.failed("INVENTORY")
    assert (
        "overlap stream FOREIGN (subjects [inventory.eu.>]), which this config does not declare"
        in str(failed.error)
    )

    creates = broker.requests["create"]
    for _ in range(3):
        worker.mark_all(Trigger.RESYNC)
        await run.settle()
    assert broker.requests["create"] == creates
    assert worker.backoff.waiting() == ["INVENTORY"]

    body["subjects"] = ["foreign.>"]  # its owner moves it away; no advisory reaches us
    await nc.request("$JS.API.STREAM.UPDATE.FOREIGN", json.dumps(body).encode())
    worker.mark_all(Trigger.RESYNC)
    await until(lambda: stream_names_are(nc, {"FOREIGN", "INVENTORY", "NOTIFICATIONS"}))
    assert broker.requests["create"] == creates + 1


# --- updates that never converge ----------------------------------------------------------


def looping_on(stream: str) -> tuple[Decide, list[int]]:
    """A planner that never converges on `stream`: every look at it wants one
    more update (a new description each time); other streams plan normally."""
    made: list[int] = []

    def decide(
        resource: Resource,
        observed: Observed | None,
        now: datetime,
        *,
        own_hashes: frozenset[str] = frozenset(),
        server: ServerInfo | None = None,
    ) -> Decision:
        if resource.stream != stream or observed is None:
            return plan.decide(resource, observed, now, own_hashes=own_hashes, server=server)
        made.append(1)
        current = observed.config.get("description", "")
        wanted = f"pass {len(made)}"
        return Decision(
            resource,
            Action.UPDATE,
            changes=(Change("description", current, wanted),),
            send={**observed.config, "description": wanted},
        )

    return decide, made


async def test_a_planner_that_never_converges_is_held_after_five_updates(
    server: NatsServer,
    nc: Client,
    running: Callable[[Worker], Running],
) -> None:
    """Each write is re-checked, and each look wants another update: after
    WRITES_PER_WINDOW updates within WRITE_WINDOW the stream is held (one
    hold marked first: the ERROR line's) and STATUS says 'blocked: not
    converging'; nothing more is
    written however often it is looked at, until the window has passed
    (then one write per window) or a reload."""
    decide, _ = looping_on("ALPHA")
    config = make_config(server.url, SMALL)
    clock = FakeClock()
    w = watched(config, clock=clock, decide=decide)
    worker, board = w.worker, w.board
    broker = Broker(nc, timeout=2.0)
    run = running(worker)
    worker.attach(broker, Trigger.STARTUP)
    await until(lambda: stream_names_are(nc, {"ALPHA", "BETA", "GAMMA"}))
    for n in range(1, WRITES_PER_WINDOW + 1):
        clock.advance(STEP)  # the re-check of the last write
        await until(partial(_requests_are, broker, "update", n))
        await run.settle()  # its outcome recorded: the next re-check is scheduled
    clock.advance(STEP)
    await until(lambda: _blocked(board))
    for _ in range(20):  # looked at again and again: advisories, resyncs
        worker.mark("ALPHA", Trigger.ADVISORY)
        worker.mark_all(Trigger.RESYNC)
        clock.advance(1.0)
        await run.settle()
    assert broker.requests["update"] == WRITES_PER_WINDOW
    assert len(w.seen.done(Result.UPDATED, stream="ALPHA")) == WRITES_PER_WINDOW
    held = w.seen.held("ALPHA")
    assert [h.first for h in held].count(True) == 1
    assert held[0].first
    assert held[0].reason.startswith("not converging: updated 5 times within 60s")
    assert w.seen.held("BETA") == w.seen.held("GAMMA") == []
    assert "1 blocked: ALPHA" in board.line()

    clock.advance(WRITE_WINDOW)  # the window has passed: one more write, then held again
    worker.mark("BETA", Trigger.ADVISORY)  # wakes the worker (it sleeps real seconds)
    await until(lambda: _requests_are(broker, "update", WRITES_PER_WINDOW + 1))
    for _ in range(5):
        clock.advance(STEP)
        await run.settle()
    assert broker.requests["update"] == WRITES_PER_WINDOW + 1
    assert "1 blocked: ALPHA" in board.line()

    worker.reload(config)  # an operator's reload starts afresh
    await until(lambda: _requests_are(broker, "update", WRITES_PER_WINDOW + 2))


async def _blocked(board: StatusBoard) -> bool:
    return "1 blocked: ALPHA" in board.line()


class CancelsOnList(FakeBroker):
    """Cancels `victim` while answering the stream list: the pass then ends in
    the same loop turn as the worker's cancellation arrives."""

    victim: asyncio.Task[None] | None = None

    async def list_streams(self) -> dict[str, Observed]:
        assert self.victim is not None
        asyncio.get_running_loop().call_soon(self.victim.cancel)
        return await super().list_streams()


async def test_a_stop_that_arrives_as_a_pass_ends_stops_the_worker() -> None:
    """The worker task cancelled (a stop) in the very turn its pass completes
    ends cancelled; it does not swallow the cancellation and carry on."""
    config = parse({"streams": {}}, "test.toml", require_resources=False)
    broker = CancelsOnList()
    worker = Worker(config, reporter=Capture())
    task = asyncio.create_task(worker.run())
    broker.victim = task
    worker.attach(broker, Trigger.STARTUP)
    done, _ = await asyncio.wait({task}, timeout=2)
    assert task in done, "the worker swallowed its cancellation and carried on"
    assert task.cancelled()


async def test_a_stop_that_races_a_mark_is_not_lost() -> None:
    """The worker waits for marks; a mark and a cancellation (the daemon
    stopping) arriving in the same loop turn must still end the wait
    cancelled. asyncio.wait_for on Python 3.11 returns the woken wait instead,
    and the worker then never stopped (the daemon hit its stop deadline)."""
    queue = WorkQueue()
    waiting = asyncio.ensure_future(queue.wait(10.0))
    await asyncio.sleep(0)  # it is waiting now
    queue.mark("S", Trigger.ADVISORY)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
