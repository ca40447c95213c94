"""`[http] listen` wired into a real `kanade-watchdog run` against a real
nats-server: real HTTP requests to /metrics, /healthz, /readyz and /status
while another client deletes streams or the broker goes away; and the two
ways the listener cannot start (a bad address, a port in use).

`test_http_endpoint` covers the endpoint on its own; `test_prometheus_scrape`
has a real Prometheus scrape it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO
from tests.daemonproc import Spawn, daemon_config, is_action
from tests.natsserver import NatsServer, free_port

P = "kanade_watchdog_"
RESOURCES = '[streams.ORDERS]\nsubjects = ["orders.>"]\n\n[kv_buckets.settings]\nhistory = 1\n'

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Reply:
    status: int
    body: str


def _get(port: int, path: str) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return Reply(r.status, r.read().decode())
    finally:
        conn.close()


async def get(port: int, path: str) -> Reply:
    return await asyncio.to_thread(_get, port, path)


async def samples(port: int) -> Samples:
    reply = await get(port, "/metrics")
    assert reply.status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(reply.body)
        for s in family.samples
    }


async def until_status(port: int, path: str, status: int, *, within: float = 10.0) -> Reply:
    async with asyncio.timeout(within):
        while (reply := await get(port, path)).status != status:  # noqa: ASYNC110 - polled over HTTP
            await asyncio.sleep(0.02)
    return reply


def served_config(
    tmp_path: Path, url: str, port: int, *, watchdog: dict[str, str | bool] | None = None
) -> Path:
    return daemon_config(
        tmp_path / "w.toml", url, resources=RESOURCES, watchdog=watchdog, http=f"127.0.0.1:{port}"
    )


async def test_a_heal_moves_the_heal_counter_and_the_latency_histogram(
    server: NatsServer, client: Client, tmp_path: Path, spawn: Spawn
) -> None:
    """A stream deleted by another client is healed by its advisory: over HTTP,
    heals_total{kind=stream,trigger=advisory} and the advisory latency
    histogram's count go up by one, writes_total by one, and the resource's
    state is in_sync again; /healthz and /readyz say 200 throughout."""
    port = free_port()
    proc = spawn(served_config(tmp_path, server.url, port))
    await proc.wait_for(is_action("ready"), within=15)
    assert (await get(port, "/healthz")) == Reply(200, "ok\n")
    await until_status(port, "/readyz", 200)
    heals = (f"{P}heals_total", (("kind", "stream"), ("trigger", "advisory")))
    latency = (f"{P}heal_latency_seconds_count", (("trigger", "advisory"),))
    latency_sum = (f"{P}heal_latency_seconds_sum", (("trigger", "advisory"),))
    writes = (f"{P}writes_total", ())
    before = await samples(port)
    assert before[heals] == 0
    assert before[(f"{P}broker_connected", ())] == 1
    assert before[(f"{P}heals_total", (("kind", "kv"), ("trigger", "startup")))] == 1

    mark = proc.mark()
    await client.jetstream().delete_stream("ORDERS")
    await proc.wait_for(is_action("created", stream="ORDERS"), after=mark, within=5)
    after = await samples(port)
    assert after[heals] == 1
    assert after[latency] == before.get(latency, 0) + 1
    assert 0 < after[latency_sum] < 5
    assert after[writes] == before[writes] + 1
    state = (("kind", "stream"), ("name", "ORDERS"), ("state", "in_sync"))
    assert after[(f"{P}resource_state", state)] == 1
    assert (await get(port, "/readyz")).status == 200


async def test_status_is_what_check_json_says(
    server: NatsServer, tmp_path: Path, spawn: Spawn
) -> None:
    """/status serves the document `kanade-watchdog check --json` prints for the
    same config and broker (the timings aside)."""
    port = free_port()
    config = served_config(tmp_path, server.url, port)
    proc = spawn(config)
    await proc.wait_for(is_action("ready"), within=15)
    await until_status(port, "/readyz", 200)
    served = json.loads((await get(port, "/status")).body)
    checked = json.loads(await asyncio.to_thread(check_json, config))
    for doc in (served, checked):
        doc.pop("seconds")
        doc["perfdata"].pop("time")
    assert served == checked
    assert served["status"] == "OK"


def check_json(config: Path) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "kanade_watchdog", "check", "--json", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


async def test_readyz_is_503_while_a_resource_is_missing_and_200_once_healed(
    server: NatsServer, client: Client, tmp_path: Path, spawn: Spawn
) -> None:
    """A stream of another owner holds ORDERS' subjects, so ORDERS cannot be
    created: /readyz is 503 naming it, its state is missing, the failure is
    counted by its error code. Once that stream is deleted, ORDERS is created
    and /readyz is 200."""
    foreign = {"name": "FOREIGN", "subjects": ["orders.eu.>"]}
    answer = await client.request("$JS.API.STREAM.CREATE.FOREIGN", json.dumps(foreign).encode())
    assert "error" not in json.loads(answer.data)
    port = free_port()
    proc = spawn(served_config(tmp_path, server.url, port, watchdog={"permanent_retry": "1h"}))
    await proc.wait_for(is_action("failed", stream="ORDERS"), within=15)
    missing = await until_status(port, "/readyz", 503)
    assert missing.body == "1 missing: ORDERS\n"
    metrics = await samples(port)
    state = (("kind", "stream"), ("name", "ORDERS"), ("state", "missing"))
    assert metrics[(f"{P}resource_state", state)] == 1
    assert metrics[(f"{P}failures_total", (("code", "10065"),))] >= 1

    await client.request("$JS.API.STREAM.DELETE.FOREIGN", b"")
    await proc.wait_for(is_action("created", stream="ORDERS"), within=5)
    assert (await until_status(port, "/readyz", 200)).body == "ready\n"


async def test_readyz_is_503_while_the_broker_is_down_and_healthz_stays_200(
    server: NatsServer, tmp_path: Path, spawn: Spawn
) -> None:
    """The broker killed: /readyz 503 saying the broker is unreachable, the
    connected gauge 0, /healthz still 200 (a broker down is not a wedge).
    The broker back: /readyz 200 after the reconnect's pass, one reconnect
    counted."""
    port = free_port()
    proc = spawn(served_config(tmp_path, server.url, port))
    await proc.wait_for(is_action("ready"), within=15)
    await until_status(port, "/readyz", 200)
    mark = proc.mark()
    server.kill()
    await proc.wait_for(is_action("broker_lost"), after=mark, within=5)
    down = await until_status(port, "/readyz", 503)
    assert down.body == f"broker unreachable: waiting for broker {server.url}\n"
    assert (await samples(port))[(f"{P}broker_connected", ())] == 0
    assert (await get(port, "/healthz")).status == 200

    server.start()
    await proc.wait_for(is_action("broker_back"), after=mark, within=10)
    await until_status(port, "/readyz", 200)
    metrics = await samples(port)
    assert metrics[(f"{P}broker_connected", ())] == 1
    assert metrics[(f"{P}broker_reconnects_total", ())] == 1


async def test_a_port_in_use_is_one_error_line_and_exit_1(
    server: NatsServer, tmp_path: Path, spawn: Spawn
) -> None:
    """Another process listens on the configured port: the daemon says so in
    one error line naming the address, exits 1, and never runs without the
    endpoint it was told to serve."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = spawn(served_config(tmp_path, server.url, port))
        assert await proc.wait_exit(within=10) == 1
    errors = proc.find(lambda line: line.get("level") in ("error", "critical"))
    assert [e["message"] for e in errors] == [
        f"cannot serve HTTP: http.listen 127.0.0.1:{port}: address already in use "
        "(another process listens on this port)"
    ]
    assert proc.find(is_action("created")) == []


@pytest.mark.parametrize(
    ("listen", "reason"),
    [
        ("broker.example:9464", "host must be an IPv4 address, [IPv6] or localhost"),
        (":9464", "missing host"),
        ("127.0.0.1:99999", "port must be a number from 1 to 65535"),
    ],
)
async def test_a_bad_listen_address_is_a_config_error_exit_78(
    server: NatsServer, tmp_path: Path, spawn: Spawn, listen: str, reason: str
) -> None:
    """A listen address that cannot be served is refused with the config's
    problems before anything starts: one line naming http.listen, exit 78."""
    config = daemon_config(tmp_path / "w.toml", server.url, resources=RESOURCES, http=listen)
    proc = spawn(config)
    assert await proc.wait_exit(within=10) == 78
    [error] = proc.find(lambda line: line.get("level") == "error")
    assert "http.listen" in error["message"]
    assert reason in error["message"]
