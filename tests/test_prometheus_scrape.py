"""A real Prometheus server (Debian's `prometheus` package) scrapes the
HTTP endpoint on loopback, loads the alert rules and answers queries.

The endpoint runs in the test's event loop, or in a real daemon (the last
test); Prometheus runs as a child
process with its own config and storage in the test's temp directory,
listening on a free loopback port.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from kanade_watchdog.report.metrics import Metrics
from tests.daemonproc import Spawn, is_action
from tests.natsserver import NatsServer, free_port
from tests.test_http_daemon import served_config
from tests.test_http_endpoint import Probe, make_endpoint

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "packaging" / "prometheus" / "kanade-watchdog.rules.yml"
DASHBOARD = ROOT / "packaging" / "grafana" / "kanade-watchdog.json"
P = "kanade_watchdog_"


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not os.path.exists(found):
        pytest.fail("prometheus not found: apt-get install prometheus (make system-packages)")
    return found


class PrometheusServer:
    """A throwaway Prometheus on loopback with its own config and storage."""

    def __init__(self, tmp: Path, target_port: int) -> None:
        self.port = free_port()
        self.log = tmp / "prometheus.log"
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  evaluation_interval: 1s\n"
            f"rule_files: [{json.dumps(str(RULES))}]\n"
            "scrape_configs:\n"
            "  - job_name: kanade-watchdog\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n"
        )
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    prometheus_binary(),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp,
            )

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def prometheus_at(tmp_path: Path) -> Iterator[Callable[[int], PrometheusServer]]:
    started: list[PrometheusServer] = []

    def start(target_port: int) -> PrometheusServer:
        server = PrometheusServer(tmp_path, target_port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


async def until(check: Callable[[], Any], what: str, server: PrometheusServer) -> Any:
    """Poll `check` in a thread until it returns something truthy (30 s bound)."""
    deadline = time.monotonic() + 30
    while True:
        if server.proc.poll() is not None:
            pytest.fail(f"prometheus exited: {server.log.read_text()[-2000:]}")
        try:
            got = await asyncio.to_thread(check)
        except OSError:  # not listening yet
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"prometheus never showed {what}: {server.log.read_text()[-2000:]}")
        await asyncio.sleep(0.2)


async def test_a_real_prometheus_scrapes_the_endpoint_and_answers_for_the_heal_counter(
    prometheus_at: Callable[[int], PrometheusServer],
) -> None:
    """Prometheus scrapes /metrics, its query API returns the heal counter and
    histogram, it evaluates every alert rule without error (the missing one
    goes pending), and every dashboard query is valid PromQL."""
    metrics, probe = Metrics(), Probe()
    metrics.declare([("stream", "ORDERS"), ("kv", "settings")])
    metrics.connected(True)
    metrics.resource_state("stream", "ORDERS", "missing")
    metrics.resource_state("kv", "settings", "in_sync")
    metrics.healed("stream", "advisory", 0.003)
    metrics.pass_done(0.01, full=True, ok=True)
    endpoint = make_endpoint(metrics, probe, read_timeout=5.0)
    await endpoint.start()
    try:
        server = prometheus_at(endpoint.port)

        def heals() -> list[Any]:
            query = f'{P}heals_total{{job="kanade-watchdog",kind="stream",trigger="advisory"}}'
            answer = server.get("/api/v1/query", query=query)
            result: list[Any] = answer["data"]["result"]
            return result

        (series,) = await until(heals, "the heal counter", server)
        assert series["metric"]["instance"] == f"127.0.0.1:{endpoint.port}"
        assert float(series["value"][1]) == 1

        answer = server.get("/api/v1/query", query=f"{P}heal_latency_seconds_count")
        assert [float(r["value"][1]) for r in answer["data"]["result"]] == [1]
        answer = server.get("/api/v1/query", query='up{job="kanade-watchdog"}')
        assert [float(r["value"][1]) for r in answer["data"]["result"]] == [1]

        def evaluated_rules() -> list[Any]:
            groups = server.get("/api/v1/rules")["data"]["groups"]
            rules: list[Any] = [r for g in groups for r in g["rules"]]
            done = rules and all(r.get("lastEvaluation", "").startswith("2") for r in rules)
            return rules if done else []

        rules = await until(evaluated_rules, "evaluated rules", server)
        assert len(rules) == 5
        assert {r["name"]: r["health"] for r in rules} == dict.fromkeys(
            (r["name"] for r in rules), "ok"
        )

        def missing_alert() -> list[Any]:
            alerts = server.get("/api/v1/alerts")["data"]["alerts"]
            found: list[Any] = [a for a in alerts if a["labels"]["alertname"].endswith("Missing")]
            return found

        (alert,) = await until(missing_alert, "the missing-resource alert", server)
        assert alert["state"] == "pending"  # `for: 1m` has not run out
        assert alert["labels"]["name"] == "ORDERS"

        board = json.loads(DASHBOARD.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                expr = (
                    target["expr"]
                    .replace("$job", "kanade-watchdog")
                    .replace("$instance", ".*")
                    .replace("$__rate_interval", "1m")
                    .replace("$__range", "1h")
                )
                answer = server.get("/api/v1/query", query=expr)
                assert answer["status"] == "success", (panel["title"], expr, answer)
    finally:
        await endpoint.stop()


async def test_a_real_prometheus_scrapes_the_daemon_and_sees_a_heal(
    server: NatsServer,
    client: Client,
    tmp_path: Path,
    spawn: Spawn,
    prometheus_at: Callable[[int], PrometheusServer],
) -> None:
    """The daemon itself, with `[http] listen` on loopback, is Prometheus's
    target: after another client deletes a declared stream and the daemon heals
    it, Prometheus's query API returns heals_total{kind=stream,trigger=advisory}
    = 1 for that instance."""
    port = free_port()
    proc = spawn(served_config(tmp_path, server.url, port))
    await proc.wait_for(is_action("ready"), within=15)
    prometheus = prometheus_at(port)
    query = f'{P}heals_total{{job="kanade-watchdog",kind="stream",trigger="advisory"}}'

    def scraped() -> list[Any]:
        result: list[Any] = prometheus.get("/api/v1/query", query=query)["data"]["result"]
        return result

    (series,) = await until(scraped, "the daemon's heal counter", prometheus)
    assert float(series["value"][1]) == 0
    mark = proc.mark()
    await client.jetstream().delete_stream("ORDERS")
    await proc.wait_for(is_action("created", stream="ORDERS"), after=mark, within=5)

    def healed() -> list[Any]:
        return [s for s in scraped() if float(s["value"][1]) == 1]

    (series,) = await until(healed, "a heal in the daemon's counter", prometheus)
    assert series["metric"]["instance"] == f"127.0.0.1:{port}"
