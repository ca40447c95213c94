"""The CREATED advisory of the daemon's own create (of a stream or of a
declared consumer) is its echo, and marks nothing (`daemon.echoes`): in a
delete storm that is one read less per heal on a broker whose API is the
bottleneck. Anyone else's CREATED advisory, a
DELETED one, and an echo that comes too late still mark their stream.

The worker runs in-process on `tests.fakebroker.FakeBroker` and an injected
clock; the CREATED advisories are handed to it as `daemon.main` does.
"""

from __future__ import annotations

from kanade_watchdog.core.result import Result
from kanade_watchdog.daemon.echoes import WITHIN, Echoes
from kanade_watchdog.daemon.worker import Worker
from kanade_watchdog.model.events import Trigger
from tests.capture import Capture
from tests.test_consumer_backoff import NAME, declared, with_stream
from tests.test_pass_pacing import converged, many
from tests.test_worker import FakeClock


def test_an_echo_is_taken_once_and_only_within_its_window() -> None:
    """Expected creates are taken by the first CREATED advisory of their
    stream within WITHIN seconds; a second one, another stream's, or one
    after the window is not an echo."""
    clock = FakeClock()
    echoes = Echoes(clock)
    echoes.expect("A")
    echoes.expect("B")
    assert echoes.own("A")
    assert not echoes.own("A")  # someone else's create after ours
    assert not echoes.own("C")
    clock.advance(WITHIN + 0.001)
    assert not echoes.own("B")


def test_expectations_whose_echo_never_came_do_not_pile_up() -> None:
    """Creates that failed send no advisory; their expectations lapse and are
    dropped instead of growing without bound."""
    clock = FakeClock()
    echoes = Echoes(clock)
    for i in range(5000):
        echoes.expect(f"S{i}")
        clock.advance(0.01)
    assert len(echoes._expected) <= 1024 + int(WITHIN / 0.01) + 1


async def test_the_workers_own_create_echo_marks_nothing_but_a_delete_does() -> None:
    """A stream deleted and re-created by the worker: the CREATED advisory of
    that create marks nothing; the next DELETED does, and so does a CREATED
    advisory nobody in this process caused."""
    clock = FakeClock()
    config = many(3)
    broker = converged(config)
    worker = Worker(config, reporter=Capture(), clock=clock)
    worker.attach(broker)
    broker.delete("S00001")
    worker.advisory("S00001")
    await worker.run_pass(worker.queue.take())
    assert broker.requests["create"] == 1
    worker.advisory("S00001", created=True)  # the echo
    assert not worker.queue.take()
    worker.advisory("S00001", created=True)  # a second create: not ours
    assert worker.queue.take().streams == {"S00001": Trigger.ADVISORY}
    worker.advisory("S00002", created=True)  # nobody here created it
    assert worker.queue.take().streams == {"S00002": Trigger.ADVISORY}
    broker.delete("S00001")
    worker.advisory("S00001")
    assert worker.queue.take().streams == {"S00001": Trigger.ADVISORY}


async def test_the_workers_own_consumer_create_echo_marks_nothing() -> None:
    """A declared consumer deleted and re-created by the worker: the
    CONSUMER.CREATED advisory of that create marks nothing (it would cost a
    stream read and a consumer list); a second one, not ours, does."""
    config = declared()
    broker = await with_stream(config)
    worker = Worker(config, reporter=Capture(), clock=FakeClock())
    worker.attach(broker)
    worker.consumer_advisory(NAME, "S")
    report = await worker.run_pass(worker.queue.take())
    assert [c.result for c in report.consumers] == [Result.CREATED]
    worker.consumer_advisory(NAME, "S", created=True)  # the echo
    assert not worker.queue.take()
    worker.consumer_advisory(NAME, "S", created=True)
    assert worker.queue.take().streams == {"S": Trigger.ADVISORY}
