"""Each declared consumer has its own retry timing: a failed consumer write
is tried again on its backoff (transient: exponential with jitter;
permanent: the slow permanent pace) without waiting for a resync or an
advisory, resyncs leave it alone meanwhile, an advisory for it brings it in
at once, and success resets it. The `Worker` runs in-process against
`tests.fakebroker.FakeBroker` on an injected clock: no network, no sleeping
for the backoff."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kanade_watchdog.config.load import parse
from kanade_watchdog.core.desired import create_config
from kanade_watchdog.core.reports import ConsumerDone
from kanade_watchdog.core.result import Result
from kanade_watchdog.daemon.worker import Worker
from kanade_watchdog.model.errors import ApiError, BrokerUnavailable
from kanade_watchdog.model.events import Trigger
from kanade_watchdog.model.settings import Config
from tests.capture import Capture
from tests.fakebroker import FakeBroker
from tests.test_worker import FakeClock, Running

NAME = "S/worker"


def declared(**watchdog: Any) -> Config:
    """Stream S and its durable consumer `worker`, and a stream T of no
    consumer, through the real parser. The backoff's first delay is short:
    the worker's wait for it is real time, the delay's passing the fake clock's."""
    document: dict[str, Any] = {
        "nats": {"servers": ["nats://127.0.0.1:4222"]},
        "watchdog": {"backoff_initial": "50ms", "backoff_max": "60s", **watchdog},
        "streams": {"S": {"subjects": ["s.>"]}, "T": {"subjects": ["t.>"]}},
        "consumers": {"S": {"worker": {"ack_policy": "explicit", "ack_wait": "30s"}}},
    }
    return parse(document, "test.toml")


async def with_stream(config: Config) -> FakeBroker:
    """A broker that already holds the declared streams: the pass writes no
    stream, so no re-check of one can bring the consumer in by the way."""
    broker = FakeBroker()
    for res in config.resources:
        await broker.create(create_config(res))
    return broker


def consumers_seen(seen: Capture) -> list[ConsumerDone]:
    return [c for p in seen.passes for c in p.consumers]


async def until(check: Callable[[], bool], *, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


@pytest.fixture
def running() -> Iterator[Callable[[Worker], Running]]:
    started: list[Running] = []

    def start(worker: Worker) -> Running:
        started.append(Running(worker))
        return started[-1]

    yield start
    for run in started:
        run.task.cancel()


def started(config: Config, broker: FakeBroker, clock: FakeClock) -> tuple[Worker, Capture]:
    seen = Capture()
    worker = Worker(config, reporter=seen, clock=clock)
    worker.attach(broker)
    return worker, seen


async def test_a_failed_consumer_create_is_retried_on_its_own_backoff(
    running: Callable[[Worker], Running],
) -> None:
    """A create that fails with a transient error is tried again once its
    backoff has passed on the injected clock, with trigger `retry`: no resync
    and no advisory is marked in between."""
    config = declared()
    clock = FakeClock()
    broker = await with_stream(config)
    broker.consumer_faults.append(BrokerUnavailable("no answer within 2s"))
    worker, seen = started(config, broker, clock)
    run = running(worker)
    worker.mark_all(Trigger.STARTUP)
    await run.settle()
    assert broker.requests["consumer_create"] == 1
    assert ("S", "worker") not in broker.consumers

    clock.advance(0.11)  # past backoff_initial plus its jitter
    await until(lambda: ("S", "worker") in broker.consumers)
    await run.settle()
    [first, healed] = consumers_seen(seen)
    assert first.result is Result.FAILED
    assert first.outcome.transient
    assert 0.05 <= first.delay <= 0.1
    assert healed.result is Result.CREATED
    assert healed.trigger is Trigger.RETRY
    assert broker.requests["consumer_create"] == 2
    assert worker.backoff.attempts(NAME) == 0  # success resets it
    assert worker.backoff.waiting() == []


async def test_a_permanent_consumer_failure_waits_unless_an_advisory_names_it(
    running: Callable[[Worker], Running],
) -> None:
    """A refused create (400: permanent) waits permanent_retry: resyncs in the
    meantime send it no create; an advisory for the consumer, or for its
    stream, brings it in at once; once permanent_retry has passed, its own
    backoff does (the worker woken by a mark of another stream). The stream's
    own successes never reset the consumer's backoff: their keys differ."""
    config = declared(permanent_retry="1h")
    clock = FakeClock()
    broker = await with_stream(config)
    refused = ApiError(
        code=400, err_code=10084, description="consumer config refused", subject="$JS.API.X"
    )
    broker.consumer_faults += [refused] * 3
    worker, seen = started(config, broker, clock)
    run = running(worker)
    worker.mark_all(Trigger.STARTUP)
    await run.settle()
    [first] = consumers_seen(seen)
    assert not first.outcome.transient
    assert first.outcome.code == "10084"
    assert 3600 <= first.delay <= 3960  # permanent_retry plus at most a tenth
    assert worker.backoff.waiting() == [NAME]

    for _ in range(3):
        clock.advance(60.0)
        worker.mark_all(Trigger.RESYNC)
        await run.settle()
    assert broker.requests["consumer_create"] == 1
    assert len(consumers_seen(seen)) == 1

    worker.consumer_advisory(NAME, "S")
    await run.settle()
    assert consumers_seen(seen)[-1].trigger is Trigger.ADVISORY
    worker.advisory("S")
    await run.settle()
    assert consumers_seen(seen)[-1].trigger is Trigger.ADVISORY
    assert broker.requests["consumer_create"] == 3
    assert worker.backoff.attempts(NAME) == 3  # S itself was in sync twice meanwhile

    clock.advance(3960.01)
    worker.mark("T", Trigger.ADVISORY)  # wakes the worker; T has no consumer
    await until(lambda: ("S", "worker") in broker.consumers)
    await run.settle()
    last = consumers_seen(seen)[-1]
    assert (last.result, last.trigger) == (Result.CREATED, Trigger.RETRY)
    assert worker.backoff.waiting() == []
