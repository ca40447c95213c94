"""`broker.link.Link`, the daemon's one live connection, against a real
nats-server; and the retry policy of `broker.forever.connect_forever`:
connection errors are retried forever, a programming error is raised.

The link is driven in the test's event loop and heard through the plain
callbacks the daemon gives it, recorded in order by `Heard`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from kanade_watchdog.broker import connect, forever
from kanade_watchdog.broker.link import Connected, Link
from kanade_watchdog.model.settings import NatsSettings
from tests.natsserver import NatsServer

ADVISORY = "io.nats.jetstream.advisory.v1.stream_action"


def settings(url: str) -> NatsSettings:
    return NatsSettings(
        servers=(url,), connect_timeout=0.5, request_timeout=0.5, reconnect_wait=0.05
    )


@dataclass
class Heard:
    """Every callback the link made, in order."""

    events: list[tuple[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self, kind: str, value: Any = None) -> None:
        self.events.append((kind, value))
        self.changed.set()

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def connected(self) -> list[Connected]:
        return [value for kind, value in self.events if kind == "connected"]

    async def until(self, check: Callable[[], bool], *, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not check():
                self.changed.clear()
                await self.changed.wait()


def make_link(url: str, heard: Heard, *, advisories: bool = True) -> Link:
    return Link(
        settings(url),
        advisories=advisories,
        on_connecting=lambda servers: heard.note("connecting", servers),
        on_connected=lambda up: heard.note("connected", up),
        on_lost=lambda: heard.note("lost"),
        on_advisory=lambda subject, data: heard.note("advisory", (subject, data)),
        on_error=lambda text: heard.note("error", text),
    )


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Link], asyncio.Task[None]]]:
    tasks: list[tuple[Link, asyncio.Task[None]]] = []

    def start(link: Link) -> asyncio.Task[None]:
        task = asyncio.create_task(link.run(), name="connection")
        tasks.append((link, task))
        return task

    yield start
    for link, task in tasks:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await link.close()


async def publish_advisory(client: Client, stream: str) -> None:
    body = json.dumps({"type": ADVISORY, "stream": stream, "action": "delete"}).encode()
    await client.publish(f"$JS.EVENT.ADVISORY.STREAM.DELETED.{stream}", body)
    await client.flush()


async def test_link_reports_a_connection_with_the_server_version_and_its_advisories(
    server: NatsServer, client: Client, running: Callable[[Link], asyncio.Task[None]]
) -> None:
    """The first connection is reported as first (not resumed) with the server's
    host:port and version; a broker that can serve requests comes with it,
    and an advisory published by another client reaches on_advisory unparsed."""
    heard = Heard()
    running(make_link(server.url, heard))
    await heard.until(lambda: bool(heard.connected()))
    [up] = heard.connected()
    assert (up.first, up.resumed) == (True, False)
    assert up.url == f"127.0.0.1:{server.port}"
    assert up.server_version.startswith("2.")
    assert await up.broker.list_streams() == {}
    assert heard.kinds()[0] == "connecting"

    await publish_advisory(client, "ORDERS")
    await heard.until(lambda: "advisory" in heard.kinds())
    [(subject, data)] = [value for kind, value in heard.events if kind == "advisory"]
    assert subject == "$JS.EVENT.ADVISORY.STREAM.DELETED.ORDERS"
    assert json.loads(data)["stream"] == "ORDERS"


async def test_link_reports_a_loss_and_the_same_client_resuming(
    server: NatsServer, running: Callable[[Link], asyncio.Task[None]]
) -> None:
    """A broker killed and restarted: on_lost, then on_connected marked resumed
    (nats-py's own reconnect), not first."""
    heard = Heard()
    running(make_link(server.url, heard))
    await heard.until(lambda: bool(heard.connected()))
    server.kill()
    await heard.until(lambda: "lost" in heard.kinds())
    server.start()
    await heard.until(lambda: len(heard.connected()) == 2, within=15)
    again = heard.connected()[1]
    assert (again.first, again.resumed) == (False, True)
    assert heard.kinds() == ["connecting", "connected", "lost", "connected"]


async def test_reconfigure_toggles_the_advisory_subscription(
    server: NatsServer, client: Client, running: Callable[[Link], asyncio.Task[None]]
) -> None:
    """Advisories off at start: nothing arrives; a reload turning them on
    subscribes on the live connection (no new connection), and turning them
    off again unsubscribes."""
    heard = Heard()
    link = make_link(server.url, heard, advisories=False)
    running(link)
    await heard.until(lambda: bool(heard.connected()))
    await publish_advisory(client, "A")
    await asyncio.sleep(0.1)
    assert "advisory" not in heard.kinds()

    link.reconfigure(link.settings, advisories=True)

    async def published_until_heard() -> None:
        while "advisory" not in heard.kinds():  # the subscription is made in a task
            await publish_advisory(client, "B")
            await asyncio.sleep(0.05)

    await asyncio.wait_for(published_until_heard(), 10)

    link.reconfigure(link.settings, advisories=False)
    await asyncio.sleep(0.3)
    heard_before = len(heard.events)
    await publish_advisory(client, "C")
    await asyncio.sleep(0.2)
    assert len(heard.events) == heard_before
    streams = {json.loads(v[1])["stream"] for k, v in heard.events if k == "advisory"}
    assert streams == {"B"}
    assert heard.kinds().count("connecting") == 1


async def test_reconfigure_with_other_servers_builds_a_new_client(
    server: NatsServer, tmp_path: Path, running: Callable[[Link], asyncio.Task[None]]
) -> None:
    """[nats] servers changed by a reload: the link closes its client, reports
    the loss, connects to the new server and reports that connection as new
    (not resumed, not first)."""
    other = NatsServer(tmp_path, name="other").start()
    try:
        heard = Heard()
        link = make_link(server.url, heard)
        running(link)
        await heard.until(lambda: bool(heard.connected()))
        link.reconfigure(settings(other.url), advisories=True)
        await heard.until(lambda: len(heard.connected()) == 2)
        new = heard.connected()[1]
        assert (new.first, new.resumed) == (False, False)
        assert new.url == f"127.0.0.1:{other.port}"
        assert [v for k, v in heard.events if k == "connecting"] == [server.url, other.url]
    finally:
        other.stop()


# --- connect_forever: what is retried -----------------------------------------------


class _Pretend:
    """Stands in for a connected client: connect_forever only sets its options."""

    def __init__(self) -> None:
        self.options: dict[str, Any] = {}


def failing_then_connecting(*errors: BaseException) -> tuple[Callable[..., Any], list[int]]:
    calls: list[int] = []

    async def attempt(_settings: NatsSettings, **_options: Any) -> _Pretend:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return _Pretend()

    return attempt, calls


async def _noop() -> None:
    pass


async def _listening(_settings: NatsSettings) -> None:
    pass


async def connected_forever(url: str) -> Any:
    return await forever.connect_forever(
        NatsSettings(servers=(url,), reconnect_wait=0.001),
        on_closed=_noop,
        on_disconnect=_noop,
        on_reconnect=_noop,
    )


async def test_connection_errors_are_retried_until_a_server_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refused sockets, TLS failures, our own attempt timeout and nats-py's
    protocol errors all mean "not yet": each is retried."""
    import ssl

    import nats.errors

    errors = (
        ConnectionRefusedError(111, "Connection refused"),
        ssl.SSLError("certificate verify failed"),
        TimeoutError("connect attempt did not finish"),
        nats.errors.NoServersError(),
        nats.errors.AuthorizationError(),
    )
    attempt, calls = failing_then_connecting(*errors)
    monkeypatch.setattr(connect, "attempt", attempt)
    monkeypatch.setattr(forever, "knock", _listening)  # the refused port opens again at once
    nc = await connected_forever("nats://127.0.0.1:1")
    assert isinstance(nc, _Pretend)
    assert len(calls) == len(errors) + 1
    assert nc.options["max_reconnect_attempts"] == -1


@pytest.mark.parametrize("bug", [TypeError("unexpected keyword"), KeyError("servers")])
async def test_a_programming_error_is_raised_not_retried(
    monkeypatch: pytest.MonkeyPatch, bug: Exception
) -> None:
    """A TypeError (or any error that is not about the connection) in an
    attempt propagates at once: the daemon exits 70 instead of reporting
    "cannot connect yet" forever."""
    attempt, calls = failing_then_connecting(bug, bug)
    monkeypatch.setattr(connect, "attempt", attempt)
    with pytest.raises(type(bug)):
        await connected_forever("nats://127.0.0.1:1")
    assert len(calls) == 1


async def test_connect_once_turns_only_connection_errors_into_broker_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A one-shot command's connect: a refused socket is "broker unavailable";
    a TypeError is a bug and comes out as itself."""
    from kanade_watchdog.model.errors import BrokerUnavailable

    refused, _ = failing_then_connecting(ConnectionRefusedError(111, "Connection refused"))
    monkeypatch.setattr(connect, "attempt", refused)
    with pytest.raises(BrokerUnavailable, match="Connection refused"):
        await connect.connect_once(NatsSettings(servers=("nats://127.0.0.1:1",)))
    bug, _ = failing_then_connecting(TypeError("bad"))
    monkeypatch.setattr(connect, "attempt", bug)
    with pytest.raises(TypeError):
        await connect.connect_once(NatsSettings(servers=("nats://127.0.0.1:1",)))
