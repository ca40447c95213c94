"""Applying a whole plan at once (`broker.apply.execute_all`) against a real
nats-server: bounded concurrency, writes whose answer comes too late, and
refusals explained with one look at the broker, not one per resource.

Thousands of streams through the real command line (`run_cli`): every
create succeeds, and `plan` right after finds everything in sync. In
process, `execute_all` runs over a `broker.api.Broker` on a real connection,
wrapped where a test needs a broker that answers late (`LateBroker`) or a
count of the writes in flight (`CountingBroker`), the way
tests/fakebroker.SlowBroker wraps one: no hook inside the package.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from kanade_watchdog.broker.api import Broker, NoAnswer
from kanade_watchdog.broker.apply import execute_all
from kanade_watchdog.broker.pool import MAX_IN_FLIGHT, bounded
from kanade_watchdog.config.load import parse
from kanade_watchdog.core.outcome import Outcome
from kanade_watchdog.core.plan import Action, Observed, plan
from kanade_watchdog.model.errors import BrokerError
from kanade_watchdog.model.resources import Resource
from tests.helpers_streams import WATCHDOG_NAME, js_api, run_cli
from tests.natsserver import NatsServer


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def declared(count: int, *, prefix: str = "S", **fields: Any) -> tuple[Resource, ...]:
    """`count` memory streams S00000..., each on its own subjects."""
    streams = {
        f"{prefix}{i:05d}": {"subjects": [f"{prefix.lower()}{i}.>"], "storage": "memory", **fields}
        for i in range(count)
    }
    return parse({"streams": streams}, "test.toml").resources


async def stream_names(nc: Client) -> set[str]:
    """Every stream's name, page by page (1,024 names a page)."""
    names: set[str] = set()
    while True:
        answer = await js_api(nc, "$JS.API.STREAM.NAMES", {"offset": len(names)})
        page = answer.get("streams") or []
        names.update(page)
        if not page or len(names) >= answer["total"]:
            return names


def bulk_config(tmp_path: Path, url: str, count: int, *, request_timeout: str) -> Path:
    body = "".join(
        f'[streams.S{i:05d}]\nsubjects = ["s{i}.>"]\nstorage = "memory"\n\n' for i in range(count)
    )
    path = tmp_path / "bulk.toml"
    path.write_text(
        f'[nats]\nservers = ["{url}"]\nname = "{WATCHDOG_NAME}"\n'
        f'request_timeout = "{request_timeout}"\n\n{body}'
    )
    return path


class LateBroker:
    """A broker whose writes are carried out but answered after the caller's
    timeout: the write reaches the real broker, then the caller gets the
    NoAnswer a late answer gives. With `lost`, the write never reaches it."""

    def __init__(self, inner: Broker, *, lost: bool = False) -> None:
        self.inner = inner
        self.requests = inner.requests
        self.server = inner.server
        self.lost = lost

    def _silence(self, verb: str, config: Mapping[str, Any]) -> NoAnswer:
        subject = f"$JS.API.STREAM.{verb}.{config['name']}"
        return NoAnswer(f"no answer on {subject} within 2s", subject=subject)

    async def list_streams(self) -> dict[str, Observed]:
        return await self.inner.list_streams()

    async def stream_info(self, name: str) -> Observed | None:
        return await self.inner.stream_info(name)

    async def create(self, config: Mapping[str, Any]) -> Observed:
        if not self.lost:
            await self.inner.create(config)
        raise self._silence("CREATE", config)

    async def update(self, config: Mapping[str, Any]) -> Observed:
        if not self.lost:
            await self.inner.update(config)
        raise self._silence("UPDATE", config)

    async def account_info(self) -> dict[str, Any]:
        return await self.inner.account_info()


class CountingBroker:
    """A broker that counts the writes in its hands at once."""

    def __init__(self, inner: Broker) -> None:
        self.inner = inner
        self.requests = inner.requests
        self.in_flight = 0
        self.most = 0

    async def _write(self, send: Any, config: Mapping[str, Any]) -> Observed:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            result: Observed = await send(config)
            return result
        finally:
            self.in_flight -= 1

    async def list_streams(self) -> dict[str, Observed]:
        return await self.inner.list_streams()

    async def stream_info(self, name: str) -> Observed | None:
        return await self.inner.stream_info(name)

    async def create(self, config: Mapping[str, Any]) -> Observed:
        return await self._write(self.inner.create, config)

    async def update(self, config: Mapping[str, Any]) -> Observed:
        return await self._write(self.inner.update, config)

    async def account_info(self) -> dict[str, Any]:
        return await self.inner.account_info()


@pytest.fixture
async def broker(server: NatsServer) -> AsyncIterator[Broker]:
    """The watchdog's own connection to the test broker."""
    nc = await nats.connect(server.url)
    yield Broker(nc, timeout=2.0)
    await nc.close()


async def apply_all(broker: Any, resources: tuple[Resource, ...], **kw: Any) -> list[Outcome]:
    observed = await broker.list_streams()
    return await execute_all(broker, plan(resources, observed, now()), resources, now(), **kw)


def results(outcomes: list[Outcome]) -> Counter[str]:
    return Counter(str(o.result) for o in outcomes)


# --- thousands of creates through the command line -------------------------------------


async def _apply_thousands(
    server: NatsServer, client: Client, tmp_path: Path, count: int, request_timeout: str
) -> None:
    config = bulk_config(tmp_path, server.url, count, request_timeout=request_timeout)
    run = await run_cli("apply", "--json", config=config, limit_seconds=120)
    doc = run.json()
    assert run.code == 0, (
        doc["summary"],
        [r for r in doc["resources"] if r["result"] != "created"][:3],
    )
    assert Counter(r["result"] for r in doc["resources"]) == {"created": count}
    assert doc["requests"]["create"] == count
    assert len(await stream_names(client)) == count
    again = await run_cli("plan", config=config, limit_seconds=120)
    assert again.code == 0, again.stdout[-500:]


async def test_apply_creates_2000_streams_every_create_succeeding(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """apply on 2,000 missing streams exits 0 with every one created, one create
    request each, and plan then finds all in sync. Sent all at once they queue
    on the broker past a 250 ms timeout, and most were reported failed although
    the broker then created them."""
    await _apply_thousands(server, client, tmp_path, 2000, "250ms")


@pytest.mark.slow
async def test_apply_creates_5000_streams_every_create_succeeding(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """The issue's case: 5,000 missing streams, the default 2 s timeout, exit 0."""
    await _apply_thousands(server, client, tmp_path, 5000, "2s")


# --- bounded concurrency -------------------------------------------------------------


async def test_no_more_writes_in_flight_than_the_limit(broker: Broker) -> None:
    """execute_all keeps at most `limit` writes in the broker's hands at once,
    and does use that many; the outcomes come back in the plan's order."""
    resources = declared(100)
    counting = CountingBroker(broker)
    outcomes = await apply_all(counting, resources, limit=8)
    assert counting.most == 8
    assert [o.decision.resource.stream for o in outcomes] == [r.stream for r in resources]
    assert results(outcomes) == {"created": 100}


def test_the_default_limit_is_bounded() -> None:
    """The default is a bound, not "everything at once"."""
    assert 1 < MAX_IN_FLIGHT <= 256


async def test_decisions_without_a_write_send_nothing(broker: Broker) -> None:
    """In-sync resources are answered without a request."""
    resources = declared(300)
    await apply_all(broker, resources)
    broker.requests.clear()
    outcomes = await apply_all(broker, resources)
    assert results(outcomes) == {"in_sync": 300}
    assert dict(broker.requests) == {"list": 2}  # the 300 streams take two pages


# --- an answer that comes after its timeout -------------------------------------------


async def test_a_create_answered_too_late_is_looked_at_and_counted_created(
    broker: Broker, client: Client
) -> None:
    """A create the broker carried out but answered after the timeout is read
    back (one STREAM.INFO) and, being as declared, counted created, not failed."""
    resources = declared(20)
    outcomes = await apply_all(LateBroker(broker), resources)
    assert results(outcomes) == {"created": 20}
    assert all(o.error is None and o.observed is not None for o in outcomes)
    assert broker.requests["info"] == 20
    assert len(await stream_names(client)) == 20


async def test_an_update_answered_too_late_is_counted_updated(broker: Broker) -> None:
    """The same for an update: the drift is gone when looked at, so it is updated."""
    await apply_all(broker, declared(5, max_msgs=10))
    outcomes = await apply_all(LateBroker(broker), declared(5, max_msgs=20))
    assert {o.decision.action for o in outcomes} == {Action.UPDATE}
    assert results(outcomes) == {"updated": 5}


async def test_a_write_that_never_happened_is_still_a_failure(broker: Broker) -> None:
    """Looking again does not hide a real failure: a create that never reached
    the broker is reported failed, with the timeout as its reason."""
    outcomes = await apply_all(LateBroker(broker, lost=True), declared(3))
    assert results(outcomes) == {"failed": 3}
    for o in outcomes:
        assert o.error is not None
        assert "no answer on $JS.API.STREAM.CREATE." in str(o.error)
    assert broker.requests["info"] == 3


# --- refusals explained once per apply --------------------------------------------------


async def test_overlap_refusals_read_the_stream_list_once(broker: Broker, client: Client) -> None:
    """100 creates refused for overlapping an undeclared stream (10065) are each
    explained by name, from one read of the stream list, not 100."""
    catchall = {"name": "CATCHALL", "subjects": ["s.>"], "storage": "memory"}
    await client.request("$JS.API.STREAM.CREATE.CATCHALL", json.dumps(catchall).encode())
    resources = parse(
        {"streams": {f"S{i:03d}": {"subjects": [f"s.{i}.>"]} for i in range(100)}}, "t.toml"
    ).resources
    outcomes = await apply_all(broker, resources)
    assert results(outcomes) == {"failed": 100}
    for o in outcomes:
        assert "stream CATCHALL (subjects" in str(o.error)
    assert broker.requests["list"] == 2  # the plan's own look, then one to explain


async def test_storage_refusals_read_the_account_once(tmp_path: Path) -> None:
    """Creates refused for memory the broker cannot reserve (10028) are each
    explained with the account's reservations, read once."""
    srv = NatsServer(tmp_path, jetstream_conf="max_memory_store: 1MB").start()
    try:
        nc = await nats.connect(srv.url)
        try:
            broker = Broker(nc, timeout=2.0)
            outcomes = await apply_all(broker, declared(40, max_bytes="2MiB"))
        finally:
            await nc.close()
    finally:
        srv.stop()
    assert results(outcomes) == {"failed": 40}
    for o in outcomes:
        assert (
            "cannot reserve max_bytes 2MiB of memory storage (declared memory total 80MiB"
            in str(o.error)
        )
    assert broker.requests["account"] == 1


async def test_a_stale_stream_list_is_read_again_once(broker: Broker, client: Client) -> None:
    """An overlap refusal that the stream list kept from an earlier refusal
    cannot explain (the overlapping stream came later) reads the list once
    more, not once per resource, and then names the newcomer."""
    early = {"name": "EARLY", "subjects": ["s.0.>"], "storage": "memory"}
    await client.request("$JS.API.STREAM.CREATE.EARLY", json.dumps(early).encode())

    class Intruded(CountingBroker):
        """Another client creates LATE, over S050-S099's subjects, before the 50th create."""

        count = 0

        async def create(self, config: Mapping[str, Any]) -> Observed:
            self.count += 1
            if self.count == 50:
                late = {"name": "LATE", "subjects": [f"s.{i}.>" for i in range(50, 100)]}
                await client.request("$JS.API.STREAM.CREATE.LATE", json.dumps(late).encode())
            return await super().create(config)

    resources = parse(
        {"streams": {f"S{i:03d}": {"subjects": [f"s.{i}.>"]} for i in range(100)}}, "t.toml"
    ).resources
    outcomes = await apply_all(Intruded(broker), resources, limit=1)
    assert results(outcomes) == {"created": 49, "failed": 51}
    assert "stream EARLY (subjects" in str(outcomes[0].error)
    assert all("stream LATE (subjects" in str(o.error) for o in outcomes[50:])
    assert broker.requests["list"] == 3  # the plan's look, S000's refusal, S050's


async def test_a_failed_explanation_read_is_not_repeated(broker: Broker) -> None:
    """When the stream list cannot be read, the explanations say so, and the
    read is not repeated for every refused resource."""

    class NoList(LateBroker):
        async def list_streams(self) -> dict[str, Observed]:
            self.requests["list"] += 1
            raise BrokerError("no list today")

        async def create(self, config: Mapping[str, Any]) -> Observed:
            return await self.inner.create(config)

    catchall = {"name": "CATCHALL", "subjects": ["s.>"], "storage": "memory"}
    await broker.create(catchall)
    resources = parse(
        {"streams": {f"S{i:03d}": {"subjects": [f"s.{i}.>"]} for i in range(30)}}, "t.toml"
    ).resources
    outcomes = await execute_all(NoList(broker), plan(resources, {}, now()), resources, now())
    assert results(outcomes) == {"failed": 30}
    assert all("find it with `nats stream ls`" in str(o.error) for o in outcomes)
    assert broker.requests["list"] == 1


async def test_a_request_cancelled_under_the_pool_cuts_the_caller_short() -> None:
    """nats-py cancels the requests in flight when its connection goes. In the
    bounded pool that ends one worker quietly (a TaskGroup does not count a
    cancelled child as an error): the caller must get CancelledError, the
    pass cut short, never a result list with holes (the daemon once crashed
    on an assertion there and exited 70)."""

    async def run(i: int) -> int:
        if i == 3:
            raise asyncio.CancelledError  # what a request cut by a closing client raises
        await asyncio.sleep(0)
        return i

    with pytest.raises(asyncio.CancelledError):
        await bounded(list(range(8)), run, limit=4)
    assert await bounded(list(range(8)), lambda i: asyncio.sleep(0, result=i), limit=4) == list(
        range(8)
    )
