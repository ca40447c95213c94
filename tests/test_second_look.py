"""The second look after a write (`Trigger.VERIFY`) asks only whether the
stream still exists: when many come due together, one STREAM.NAMES request
answers them instead of a STREAM.INFO each (`reconcile._still_there`); a
stream missing from the names is read and re-created like any other, and a
stream marked by anything else as well is read and compared.

In-process, `tests.fakebroker.FakeBroker` (its STREAM.NAMES is held to the
real broker's by tests/test_broker_contract.py), no sleeps.
"""

from __future__ import annotations

from pathlib import Path

import nats
import pytest

from kanade_watchdog.broker.api import Broker as NatsBroker
from kanade_watchdog.core.result import Result
from kanade_watchdog.daemon.queue import WorkQueue
from kanade_watchdog.daemon.reconcile import NAMES_FROM
from kanade_watchdog.daemon.worker import Worker
from kanade_watchdog.model.errors import BrokerUnavailable, PermissionDenied
from kanade_watchdog.model.events import Trigger
from tests.capture import Capture
from tests.conftest import StartServer
from tests.fakebroker import FakeBroker
from tests.natsserver import NatsServer
from tests.test_pass_pacing import converged, many
from tests.test_security import WATCHDOG_USER, least_privilege_conf, new_creds

COUNT = NAMES_FROM * 3


class NoNames(FakeBroker):
    async def stream_names(self) -> set[str]:
        self.requests["names"] += 1
        raise BrokerUnavailable("no answer on $JS.API.STREAM.NAMES within 2s")


def worker_on(broker: FakeBroker) -> Worker:
    worker = Worker(many(COUNT), reporter=Capture())
    worker.attach(broker)
    return worker


def second_looks(worker: Worker, streams: list[str]) -> None:
    for stream in streams:
        worker.mark(stream, Trigger.VERIFY)


STREAMS = [f"S{i:05d}" for i in range(COUNT)]


async def test_many_second_looks_cost_one_names_request_and_heal_a_lost_stream() -> None:
    """Every declared stream's second look due at once: one names request, no
    STREAM.INFO for those still there, and the one deleted meanwhile (its
    advisory dropped) is read and created again."""
    broker = converged(many(COUNT))
    worker = worker_on(broker)
    broker.delete("S00003")
    second_looks(worker, STREAMS)
    report = await worker.run_pass(worker.queue.take())
    assert broker.requests["names"] == 1
    assert broker.requests["info"] == 1
    assert broker.requests["create"] == 1
    assert [d.resource.stream for d in report.done if d.result is Result.CREATED] == ["S00003"]


async def test_a_few_second_looks_are_read_one_by_one() -> None:
    """Below NAMES_FROM, a STREAM.INFO each is cheaper than listing every name."""
    broker = converged(many(COUNT))
    worker = worker_on(broker)
    second_looks(worker, STREAMS[: NAMES_FROM - 1])
    await worker.run_pass(worker.queue.take())
    assert broker.requests["names"] == 0
    assert broker.requests["info"] == NAMES_FROM - 1


async def test_a_stream_an_advisory_marked_too_is_read_and_compared() -> None:
    """A second look due for a stream an UPDATED advisory also marked: its
    drift is found, since the advisory's mark wants it read."""
    broker = converged(many(COUNT))
    worker = worker_on(broker)
    second_looks(worker, STREAMS)
    broker.streams["S00005"]["subjects"] = ["elsewhere.>"]  # drifted; its advisory arrives
    worker.advisory("S00005")
    report = await worker.run_pass(worker.queue.take())
    assert broker.requests["names"] == 1
    assert broker.requests["info"] == 1
    assert [d.resource.stream for d in report.done if d.result is Result.UPDATED] == ["S00005"]


async def test_without_names_each_second_look_is_read() -> None:
    """A names request that fails costs nothing but the request: each stream
    is then read as before."""
    config = many(COUNT)
    broker = NoNames()
    for stream, observed in converged(config).streams.items():
        broker.streams[stream] = observed
    worker = worker_on(broker)
    broker.delete("S00002")
    second_looks(worker, STREAMS)
    report = await worker.run_pass(worker.queue.take())
    assert broker.requests["names"] == 1
    assert broker.requests["info"] == COUNT
    assert broker.requests["create"] == 1
    assert not report.failed


def test_a_second_look_gives_way_to_any_other_trigger_of_the_same_stream() -> None:
    """The queue keeps a stream's first mark, except that a VERIFY mark is
    replaced by any other trigger (its arrival time stays the first)."""
    clock = iter([1.0, 2.0, 3.0]).__next__
    queue = WorkQueue(clock)
    queue.mark("A", Trigger.VERIFY)
    queue.mark("A", Trigger.ADVISORY)
    queue.mark("A", Trigger.RETRY)
    batch = queue.take()
    assert batch.streams == {"A": Trigger.ADVISORY}
    assert batch.arrived("A") == 1.0


async def test_a_grant_without_stream_names_costs_one_refusal_per_connection(
    tmp_path: Path, start_server: StartServer
) -> None:
    """A user granted everything but STREAM.NAMES (the grant before it was
    used): the first names request fails as a permission denial; later ones
    are refused at once, without a request that would wait out a timeout."""
    creds = new_creds()
    conf = least_privilege_conf(creds, drop=("$JS.API.STREAM.NAMES",))
    srv = start_server(NatsServer(tmp_path, extra_conf=conf))
    broker: NatsBroker | None = None

    async def on_error(exc: Exception) -> None:
        if broker is not None:
            broker.note_error(str(exc))

    nc = await nats.connect(srv.url, user=WATCHDOG_USER, password=creds.password, error_cb=on_error)
    try:
        broker = NatsBroker(nc, timeout=0.5)
        with pytest.raises(PermissionDenied, match=r"STREAM\.NAMES"):
            await broker.stream_names()
        assert broker.requests["names"] == 1
        with pytest.raises(PermissionDenied):
            await broker.stream_names()
        assert broker.requests["names"] == 1
        assert await broker.stream_info("NOPE") is None  # the rest of the grant works
    finally:
        await nc.close()
