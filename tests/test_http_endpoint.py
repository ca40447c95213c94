"""The HTTP endpoint (`report.http`): real requests over loopback TCP.

The endpoint runs in the test's event loop; clients are http.client in a
worker thread (what a probe does) or raw asyncio streams (for malformed
requests). `test_prometheus_scrape.py` has a real Prometheus scrape it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from kanade_watchdog.report.http import (
    DEFAULT_LISTEN,
    Endpoint,
    EndpointError,
    is_loopback,
    parse_listen,
)
from kanade_watchdog.report.metrics import CONTENT_TYPE, Metrics

P = "kanade_watchdog_"


@dataclass
class Probe:
    """What the daemon's callables answer; tests flip it between requests."""

    healthy: bool = True
    ready: tuple[bool, str] = (True, "")
    status: str | dict[str, Any] = field(default_factory=lambda: {"format": 1, "in_sync": True})
    fail: Exception | None = None

    def is_healthy(self) -> bool:
        if self.fail is not None:
            raise self.fail
        return self.healthy

    def is_ready(self) -> tuple[bool, str]:
        return self.ready

    def document(self) -> str | dict[str, Any]:
        return self.status


@dataclass
class Served:
    endpoint: Endpoint
    metrics: Metrics
    probe: Probe

    @property
    def port(self) -> int:
        return self.endpoint.port


def make_endpoint(metrics: Metrics, probe: Probe, **kwargs: Any) -> Endpoint:
    return Endpoint(
        "127.0.0.1",
        kwargs.pop("port", 0),
        metrics=metrics,
        healthy=probe.is_healthy,
        ready=probe.is_ready,
        status=probe.document,
        **{"read_timeout": 0.5, **kwargs},
    )


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    metrics, probe = Metrics(), Probe()
    endpoint = make_endpoint(metrics, probe)
    await endpoint.start()
    try:
        yield Served(endpoint, metrics, probe)
    finally:
        await endpoint.stop()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def _request(port: int, method: str, path: str) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


async def request(port: int, path: str, method: str = "GET") -> Reply:
    return await asyncio.to_thread(_request, port, method, path)


async def raw(port: int, data: bytes, *, close_write: bool = False) -> bytes:
    """Send bytes as they are and read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if close_write:
            writer.write_eof()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


def status_of(response: bytes) -> int:
    line = response.split(b"\r\n", 1)[0]
    assert line.startswith(b"HTTP/1.1 "), response[:80]
    return int(line.split()[1])


# --- the four routes ------------------------------------------------------------------


async def test_metrics_serves_the_text_format_and_counters_move_after_calls(
    served: Served,
) -> None:
    """/metrics parses with prometheus_client's parser; a heal moves the heal
    counter and the latency histogram as seen over HTTP."""
    served.metrics.declare([("stream", "ORDERS")])
    before = await request(served.port, "/metrics")
    assert before.status == 200
    assert before.headers["content-type"] == CONTENT_TYPE
    assert int(before.headers["content-length"]) == len(before.body)

    def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body.decode())
            for s in f.samples
        }

    heal = (f"{P}heals_total", (("kind", "stream"), ("trigger", "advisory")))
    count = (f"{P}heal_latency_seconds_count", (("trigger", "advisory"),))
    first = samples(before.body)
    assert first[heal] == 0
    assert count not in first
    served.metrics.healed("stream", "advisory", 0.003)
    served.metrics.writes(1)
    after = samples((await request(served.port, "/metrics")).body)
    assert after[heal] == 1
    assert after[count] == 1
    assert after[(f"{P}heal_latency_seconds_bucket", (("le", "0.005"), ("trigger", "advisory")))]
    assert after[(f"{P}writes_total", ())] == first[(f"{P}writes_total", ())] + 1


async def test_healthz_follows_the_healthy_callable(served: Served) -> None:
    ok = await request(served.port, "/healthz")
    assert (ok.status, ok.body) == (200, b"ok\n")
    served.probe.healthy = False
    wedged = await request(served.port, "/healthz")
    assert wedged.status == 503
    assert wedged.body.count(b"\n") == 1
    served.probe.healthy = True
    assert (await request(served.port, "/healthz")).status == 200


async def test_readyz_is_200_only_when_ready_and_says_why_not_in_one_line(
    served: Served,
) -> None:
    assert (await request(served.port, "/readyz")).status == 200
    served.probe.ready = (False, "stream ORDERS missing\nand more\r\n")
    missing = await request(served.port, "/readyz")
    assert missing.status == 503
    assert missing.body == b"stream ORDERS missing and more\n"
    served.probe.ready = (False, "")
    assert (await request(served.port, "/readyz")).body == b"not ready\n"
    served.probe.ready = (False, "x" * 5000)
    long = await request(served.port, "/readyz")
    assert len(long.body) <= 201
    served.probe.ready = (True, "")
    assert (await request(served.port, "/readyz")).status == 200


async def test_status_serves_the_callables_json(served: Served) -> None:
    """A mapping is encoded; a string (the `check --json` text) is served as is."""
    reply = await request(served.port, "/status")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert json.loads(reply.body) == {"format": 1, "in_sync": True}
    served.probe.status = '{\n  "format": 1,\n  "summary": "3 in_sync"\n}'
    reply = await request(served.port, "/status")
    assert reply.body == b'{\n  "format": 1,\n  "summary": "3 in_sync"\n}\n'


async def test_head_answers_the_headers_without_a_body(served: Served) -> None:
    reply = await request(served.port, "/healthz", "HEAD")
    assert reply.status == 200
    assert reply.headers["content-length"] == "3"
    assert reply.body == b""
    raw_reply = await raw(served.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw_reply.endswith(b"\r\n\r\n")


async def test_other_paths_are_404_and_other_methods_405(served: Served) -> None:
    for path in ("/", "/metrics/", "/nope", "/metricsx", "/METRICS"):
        assert (await request(served.port, path)).status == 404, path
    assert (await request(served.port, "/nope", "POST")).status == 404
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
        reply = await request(served.port, "/metrics", method)
        assert reply.status == 405, method
        assert reply.headers["allow"] == "GET, HEAD"
    assert (await request(served.port, "/metrics?format=x")).status == 200


async def test_a_failing_callable_gives_500_is_logged_once_and_serving_goes_on(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    served.probe.fail = RuntimeError("worker state unreadable")
    with caplog.at_level(logging.ERROR, logger="kanade_watchdog.http"):
        assert (await request(served.port, "/healthz")).status == 500
        assert (await request(served.port, "/healthz")).status == 500
    logged = [r for r in caplog.records if r.name == "kanade_watchdog.http"]
    assert len(logged) == 1
    assert "worker state unreadable" in logged[0].getMessage()
    served.probe.fail = None
    assert (await request(served.port, "/healthz")).status == 200
    assert (await request(served.port, "/metrics")).status == 200


# --- the request parser ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"GET /healthz HTTP/1.0\r\n\r\n", 200),
        (b"GET /healthz HTTP/1.1\r\nhost:x\r\nAccept: */*\r\n\r\n", 200),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET  /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", 400),
        (b"GET http://x/healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET /h\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ],
)
async def test_the_parser_is_strict(served: Served, request_bytes: bytes, expected: int) -> None:
    """Only a well-formed GET or HEAD without a body gets an answer; every
    response closes the connection."""
    reply = await raw(served.port, request_bytes)
    assert status_of(reply) == expected
    assert b"\r\nConnection: close\r\n" in reply


async def test_a_slow_request_head_times_out_with_408(served: Served) -> None:
    """A head that does not complete within read_timeout (0.5 s here) is
    answered 408 and closed; so is one with bare LF line ends, which never
    completes."""
    assert status_of(await raw(served.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")) == 408
    assert status_of(await raw(served.port, b"GET /healthz HTTP/1.1\nHost: x\n\n")) == 408


async def test_a_client_that_leaves_early_gets_nothing_and_harms_nothing(served: Served) -> None:
    assert await raw(served.port, b"GET /hea", close_write=True) == b""
    assert (await request(served.port, "/healthz")).status == 200


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_request_head_gets_a_defined_answer(junk: bytes) -> None:
    """Property: whatever bytes form the head, the parser answers with one of
    its statuses and never raises."""
    endpoint = make_endpoint(Metrics(process=False), Probe())
    response, _ = endpoint._handle(junk + b"\r\n\r\n")
    assert response.status in {200, 400, 404, 405, 505}
    assert response.encode(head_only=False).startswith(f"HTTP/1.1 {response.status} ".encode())


# --- connections and lifecycle --------------------------------------------------------


async def connections(endpoint: Endpoint, wanted: Callable[[int], bool]) -> None:
    """Wait (5 s at most) until the server side has accepted what the client opened."""
    for _ in range(500):
        if wanted(endpoint.connections):
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"the endpoint holds {endpoint.connections} connections")


async def test_connections_past_the_cap_are_closed_at_once() -> None:
    metrics, probe = Metrics(process=False), Probe()
    endpoint = make_endpoint(metrics, probe, max_connections=2, read_timeout=5.0)
    await endpoint.start()
    idle = [await asyncio.open_connection("127.0.0.1", endpoint.port) for _ in range(2)]
    try:
        await connections(endpoint, lambda n: n == 2)
        try:  # closed unread: an end of stream or a reset, never an answer
            refused = await raw(endpoint.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        except ConnectionResetError:
            refused = b""
        assert refused == b""
        idle[0][1].close()
        await idle[0][1].wait_closed()
        await connections(endpoint, lambda n: n == 1)
        assert status_of(await raw(endpoint.port, b"GET /healthz HTTP/1.0\r\n\r\n")) == 200
    finally:
        for _, writer in idle:
            writer.close()
            await writer.wait_closed()
        await endpoint.stop()


async def test_stop_closes_open_connections_and_the_listener() -> None:
    metrics, probe = Metrics(process=False), Probe()
    endpoint = make_endpoint(metrics, probe, read_timeout=30.0)
    await endpoint.start()
    port = endpoint.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await connections(endpoint, lambda n: n == 1)
        async with asyncio.timeout(5):
            await endpoint.stop()  # does not wait out the idle client's 30 s
            assert await reader.read() == b""
    finally:
        writer.close()
        await writer.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    await endpoint.stop()  # a second stop is harmless


async def test_a_port_in_use_is_one_clear_endpoint_error(served: Served) -> None:
    """Another listener on the port (here: a plain socket, and a second
    endpoint) makes start() raise EndpointError naming the address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        endpoint = make_endpoint(Metrics(process=False), Probe(), port=port)
        with pytest.raises(EndpointError) as caught:
            await endpoint.start()
        assert str(caught.value) == (
            f"http.listen 127.0.0.1:{port}: address already in use "
            "(another process listens on this port)"
        )
        assert "\n" not in str(caught.value)
    second = make_endpoint(Metrics(process=False), Probe(), port=served.port)
    with pytest.raises(EndpointError, match="already in use"):
        await second.start()
    await second.stop()
    assert (await request(served.port, "/healthz")).status == 200


@pytest.mark.skipif(
    not socket.has_ipv6 or not os.path.exists("/proc/net/if_inet6"), reason="no IPv6 on this host"
)
async def test_ipv6_loopback_and_localhost_serve() -> None:
    for listen in ("[::1]:0", "localhost:0"):
        host, _ = parse_listen(listen.replace(":0", ":1"))
        probe = Probe()
        endpoint = Endpoint(
            host,
            0,
            metrics=Metrics(process=False),
            healthy=probe.is_healthy,
            ready=probe.is_ready,
            status=probe.document,
        )
        await endpoint.start()
        try:
            assert (await request_host(host, endpoint.port, "/healthz")).status == 200
        finally:
            await endpoint.stop()


async def request_host(host: str, port: int, path: str) -> Reply:
    def call() -> Reply:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return Reply(r.status, dict(r.getheaders()), r.read())
        finally:
            conn.close()

    return await asyncio.to_thread(call)


# --- [http] listen --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (DEFAULT_LISTEN, ("127.0.0.1", 9464)),
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),
        ("10.1.2.3:1", ("10.1.2.3", 1)),
        ("[::1]:9464", ("::1", 9464)),
        ("[::]:65535", ("::", 65535)),
        ("[0:0:0:0:0:0:0:1]:80", ("::1", 80)),
        ("localhost:9464", ("localhost", 9464)),
        ("LocalHost:9464", ("localhost", 9464)),
    ],
)
def test_parse_listen_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (9464, "must be a string"),
        (None, "must be a string"),
        (["127.0.0.1", 9464], "must be a string"),
        ("", "missing :PORT"),
        ("127.0.0.1", "missing :PORT"),
        (":9464", "missing host"),
        ("::1:9464", "IPv6 address goes in brackets"),
        ("[::1]", "missing :PORT after the IPv6"),
        ("[::1:9464", "closing ]"),
        ("[127.0.0.1]:9464", "not an IPv6 address"),
        ("[::1]9464", "missing :PORT after the IPv6"),
        ("example.com:9464", "host must be an IPv4 address"),
        ("metrics.local:9464", "host must be an IPv4 address"),
        ("127.0.0.01:9464", "host must be an IPv4 address"),
        ("256.0.0.1:9464", "host must be an IPv4 address"),
        (" 127.0.0.1:9464", "host must be an IPv4 address"),
        ("127.0.0.1:0", "port must be a number from 1 to 65535"),
        ("127.0.0.1:65536", "port must be a number from 1 to 65535"),
        ("127.0.0.1:+80", "port must be a number from 1 to 65535"),
        ("127.0.0.1:http", "port must be a number from 1 to 65535"),
        ("127.0.0.1:9464 ", "port must be a number from 1 to 65535"),
        ("127.0.0.1:", "port must be a number from 1 to 65535"),
        ("224.0.0.1:9464", "multicast"),
        ("[ff02::1]:9464", "multicast"),
    ],
)
def test_parse_listen_refuses_with_the_reason(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        parse_listen(value)
    assert "\n" not in str(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.integers(), st.none(), st.floats()))
def test_parse_listen_returns_a_bindable_pair_or_a_value_error(value: object) -> None:
    """Property: any value either parses to (host, port 1..65535) or raises
    ValueError, nothing else."""
    try:
        host, port = parse_listen(value)
    except ValueError as exc:
        reason = str(exc)
    else:
        reason = ""
        assert 1 <= port <= 65535
        assert host == "localhost" or ":" in host or host.count(".") == 3
    assert "\n" not in reason


@settings(max_examples=100, deadline=None)
@given(st.ip_addresses(), st.integers(min_value=1, max_value=65535))
def test_parse_listen_round_trips_every_address(address: Any, port: int) -> None:
    if address.is_multicast:
        return
    text = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    assert parse_listen(text) == (str(address), port)


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("127.9.9.9")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("::")
    assert not is_loopback("10.0.0.1")
