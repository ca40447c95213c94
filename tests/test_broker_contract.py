"""One contract, two brokers: the in-memory fake (tests/fakebroker.py) and a
real nats-server through `broker.api.Broker` must answer every case alike,
so tests that run the reconciler against the fake prove something about the
real thing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from kanade_watchdog.broker.api import Broker as NatsBroker
from kanade_watchdog.core.ports import Broker, ConsumerBroker, StreamNames
from kanade_watchdog.model.errors import ApiError
from tests.fakebroker import FakeBroker
from tests.natsserver import NatsServer

SECOND = 1_000_000_000


@pytest.fixture(params=["fake", "real"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    if request.param == "fake":
        yield FakeBroker()
        return
    server = NatsServer(tmp_path).start()
    nc = await nats.connect(server.url)
    try:
        yield NatsBroker(nc, timeout=2.0)
    finally:
        await nc.close()
        server.stop()


def stream(name: str = "ORDERS", **fields: Any) -> dict[str, Any]:
    return {"name": name, "subjects": [f"{name.lower()}.>"], **fields}


async def test_a_create_stores_what_was_sent_with_server_defaults_filled_in(
    broker: Broker,
) -> None:
    """The answer and a later read hold the sent fields, the server's defaults
    for the rest, our metadata and the server's own `_nats.*` keys."""
    sent = stream(max_age=3600 * SECOND, metadata={"owner": "ops"})
    answer = await broker.create(sent)
    assert answer.did_create
    read = await broker.stream_info("ORDERS")
    assert read is not None
    for config in (answer.config, read.config):
        assert config["subjects"] == ["orders.>"]
        assert config["max_age"] == 3600 * SECOND
        assert config["duplicate_window"] == 120 * SECOND
        assert config["compression"] == "none"
        assert config["storage"] == "file"
        assert config["metadata"]["owner"] == "ops"
        assert any(k.startswith("_nats.") for k in config["metadata"])
    assert read.state["messages"] == 0


async def test_a_missing_stream_reads_as_none(broker: Broker) -> None:
    """Not found is an answer, not an error."""
    assert await broker.stream_info("NOPE") is None


async def test_an_identical_create_is_accepted_and_a_different_one_refused(
    broker: Broker,
) -> None:
    """Creating twice with the same config is idempotent; another config under
    the same name is 10058."""
    await broker.create(stream())
    again = await broker.create(stream())
    assert again.config["subjects"] == ["orders.>"]
    with pytest.raises(ApiError) as info:
        await broker.create(stream(max_msgs=10))
    assert info.value.err_code == 10058


async def test_an_update_replaces_fields_in_place(broker: Broker) -> None:
    """A mutable field changes and the change is what a read returns."""
    created = await broker.create(stream(max_msgs=100))
    config = {**created.config, "max_msgs": 50}
    await broker.update(config)
    read = await broker.stream_info("ORDERS")
    assert read is not None
    assert read.config["max_msgs"] == 50


async def test_an_update_of_a_missing_stream_is_not_found(broker: Broker) -> None:
    """An update never creates."""
    with pytest.raises(ApiError) as info:
        await broker.update(stream("GONE"))
    assert info.value.err_code == 10059
    assert await broker.stream_info("GONE") is None


@pytest.mark.parametrize(
    ("field", "before", "after"),
    [("storage", "file", "memory"), ("retention", "limits", "workqueue")],
)
async def test_immutable_fields_are_refused_in_place(
    broker: Broker, field: str, before: str, after: str
) -> None:
    """Storage type and retention to/from workqueue cannot change (10052)."""
    created = await broker.create(stream(**{field: before}))
    with pytest.raises(ApiError) as info:
        await broker.update({**created.config, field: after})
    assert info.value.err_code == 10052


async def test_overlapping_subjects_are_refused(broker: Broker) -> None:
    """Two streams may not capture the same subject, on create or update (10065)."""
    await broker.create(stream("A", subjects=["a.>"]))
    with pytest.raises(ApiError) as info:
        await broker.create(stream("B", subjects=["a.x"]))
    assert info.value.err_code == 10065
    created = await broker.create(stream("C", subjects=["c.>"]))
    with pytest.raises(ApiError) as info:
        await broker.update({**created.config, "subjects": ["c.>", "a.b"]})
    assert info.value.err_code == 10065


async def test_a_dedupe_window_longer_than_max_age_is_refused(broker: Broker) -> None:
    """The broker does not clamp the window to max_age: it refuses (10052), so
    the watchdog must clamp what it sends."""
    with pytest.raises(ApiError) as info:
        await broker.create(stream(max_age=SECOND, duplicate_window=2 * SECOND))
    assert info.value.err_code == 10052
    created = await broker.create(stream(max_age=2 * SECOND, duplicate_window=SECOND))
    assert created.config["duplicate_window"] == SECOND


async def test_the_list_holds_every_stream_and_requests_are_counted(broker: Broker) -> None:
    """One list names every stream with its config; each call is counted by verb."""
    for name in ("A", "B", "C"):
        await broker.create(stream(name))
    listed = await broker.list_streams()
    assert set(listed) == {"A", "B", "C"}
    assert not any(o.leaderless for o in listed.values())
    assert listed["B"].config["subjects"] == ["b.>"]
    assert broker.requests["create"] == 3
    assert broker.requests["list"] == 1


async def test_the_names_hold_every_stream_past_one_page(broker: Broker) -> None:
    """`StreamNames`: every stream's name, across pages of 1,024, one request
    per page."""
    assert isinstance(broker, StreamNames)
    configs = [stream(f"N{i:04d}", storage="memory") for i in range(1030)]
    gate = asyncio.Semaphore(64)

    async def create(config: dict[str, Any]) -> None:
        async with gate:
            await broker.create(config)

    await asyncio.gather(*(create(c) for c in configs))
    assert await broker.stream_names() == {c["name"] for c in configs}
    assert broker.requests["names"] == 2


# --- durable consumers (ports.ConsumerBroker) -----------------------------------------


async def test_consumer_create_update_and_their_refusals(broker: Broker) -> None:
    """A create lists the consumer with what was sent; the same create again
    is accepted; a create over another config is 10148, an update of a missing
    consumer 10149, any consumer request on a missing stream 10059."""
    assert isinstance(broker, ConsumerBroker)
    await broker.create(stream())
    sent = {"durable_name": "worker", "ack_policy": "explicit", "ack_wait": 30 * SECOND}
    await broker.put_consumer("ORDERS", "worker", sent, action="create")
    await broker.put_consumer("ORDERS", "worker", sent, action="create")
    [listed] = await broker.list_consumers("ORDERS")
    assert listed["name"] == "worker"
    assert listed["config"]["ack_wait"] == 30 * SECOND
    with pytest.raises(ApiError) as info:
        await broker.put_consumer(
            "ORDERS", "worker", {**sent, "ack_wait": 60 * SECOND}, action="create"
        )
    assert info.value.err_code == 10148
    with pytest.raises(ApiError) as info:
        await broker.put_consumer(
            "ORDERS", "other", {**sent, "durable_name": "other"}, action="update"
        )
    assert info.value.err_code == 10149
    with pytest.raises(ApiError) as info:
        await broker.list_consumers("NOPE")
    assert info.value.err_code == 10059
    with pytest.raises(ApiError) as info:
        await broker.put_consumer("NOPE", "worker", sent, action="create")
    assert info.value.err_code == 10059
