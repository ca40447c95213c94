"""The Prometheus metrics (`report.metrics`), the alert rules and the dashboard.

The exposition is read back with prometheus_client's own parser and checked
by the real `promtool` (Debian's `prometheus` package, as `make` installs
it); the rules pass `promtool check rules` and their unit tests under
`promtool test rules`; every metric the rules and the dashboard name is one
`Metrics` exposes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from kanade_watchdog import __version__
from kanade_watchdog.core.consumer_plan import ConsumerDecision, ConsumerOutcome
from kanade_watchdog.core.plan import Action
from kanade_watchdog.core.reports import ConsumerDone, PassReport, Scope
from kanade_watchdog.core.result import Result
from kanade_watchdog.model.consumers import Consumer
from kanade_watchdog.model.events import Trigger
from kanade_watchdog.report.meter import MetricsReporter
from kanade_watchdog.report.metrics import (
    CONTENT_TYPE,
    HEAL_BUCKETS,
    MAX_FAILURE_CODES,
    OTHER_CODE,
    STATES,
    TRIGGERS,
    Metrics,
)

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "packaging" / "prometheus" / "kanade-watchdog.rules.yml"
RULE_TESTS = ROOT / "packaging" / "prometheus" / "kanade-watchdog.rules.test.yml"
DASHBOARD = ROOT / "packaging" / "grafana" / "kanade-watchdog.json"
P = "kanade_watchdog_"


def families(m: Metrics) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(m.render().decode())}


def value(m: Metrics, sample: str, **labels: str) -> float | None:
    """The value of one sample, or None when the series is not exposed."""
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            if s.name == sample and s.labels == labels:
                return float(s.value)
    return None


def states_of(m: Metrics, kind: str, name: str) -> dict[str, float | None]:
    return {s: value(m, f"{P}resource_state", kind=kind, name=name, state=s) for s in STATES}


def busy_metrics() -> Metrics:
    """A Metrics instance on which every method has been called."""
    m = Metrics(clock=lambda: 1_700_000_000.0)
    m.declare(
        [
            ("stream", "ORDERS"),
            ("kv", "settings"),
            ("object_store", "blobs"),
            ("consumer", "ORDERS/worker"),
        ]
    )
    m.resource_state("stream", "ORDERS", "in_sync")
    m.resource_state("consumer", "ORDERS/worker", "missing")
    m.resource_state("kv", "settings", "drifted")
    m.resource_state("object_store", "blobs", "missing")
    m.healed("object_store", "advisory", 0.004)
    m.updated("kv", "resync")
    m.pass_done(0.02, full=True, ok=True)
    m.pass_done(0.003, full=False, ok=False)
    m.connected(True)
    m.reconnected()
    m.failure("10047")
    m.failure("TimeoutError")
    m.writes(2)
    m.reload(True)
    m.build_info(__version__, "2.15.1")
    return m


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool not found: apt-get install prometheus (make system-packages)")
    return found


# --- the exposition -------------------------------------------------------------------


def test_the_exposition_parses_and_every_own_metric_is_prefixed_and_documented() -> None:
    """Every family reads back with the official parser; ours carry the prefix
    and a HELP text; the rest are the library's process and platform ones."""
    found = families(busy_metrics())
    ours = {name: f for name, f in found.items() if name.startswith(P)}
    assert set(found) - set(ours) <= {
        "python_info",
        *(n for n in found if n.startswith("process_")),
    }
    assert {name: f.type for name, f in ours.items()} == {
        f"{P}resource_state": "gauge",
        f"{P}heals": "counter",
        f"{P}updates": "counter",
        f"{P}heal_latency_seconds": "histogram",
        f"{P}pass_duration_seconds": "histogram",
        f"{P}passes": "counter",
        f"{P}last_full_pass_success_timestamp_seconds": "gauge",
        f"{P}broker_connected": "gauge",
        f"{P}broker_reconnects": "counter",
        f"{P}failures": "counter",
        f"{P}writes": "counter",
        f"{P}config_reloads": "counter",
        f"{P}config_last_reload_successful": "gauge",
        f"{P}build_info": "gauge",
    }
    assert all(f.documentation for f in ours.values())
    assert "process_start_time_seconds" in found  # the no-pass alert counts from it


def test_no_created_series_double_the_exposition() -> None:
    """Counters and histograms expose no *_created companions."""
    assert b"_created" not in busy_metrics().render()


def test_the_content_type_is_the_one_the_library_pairs_with_generate_latest() -> None:
    """CONTENT_TYPE is what prometheus_client itself sends with this format."""
    assert choose_encoder("")[1] == CONTENT_TYPE


def test_the_registry_is_private() -> None:
    """Two instances do not share series, and the global registry stays empty
    of ours (a second Metrics in one process must not collide)."""
    from prometheus_client import REGISTRY

    a, b = Metrics(process=False), Metrics(process=False)
    a.writes(3)
    assert value(a, f"{P}writes_total") == 3
    assert value(b, f"{P}writes_total") == 0
    assert not any(n.startswith(P) for n in REGISTRY._names_to_collectors)


# --- each method ----------------------------------------------------------------------


def test_a_heal_moves_its_counter_and_the_latency_histogram() -> None:
    """healed() adds one to heals{kind,trigger} and puts the seconds in the
    histogram's buckets, count and sum."""
    m = Metrics(process=False)
    m.declare([("stream", "ORDERS")])
    heals = f"{P}heals_total"
    assert value(m, heals, kind="stream", trigger="advisory") == 0
    m.healed("stream", "advisory", 0.004)
    m.healed("stream", "advisory", 0.2)
    assert value(m, heals, kind="stream", trigger="advisory") == 2
    assert value(m, heals, kind="stream", trigger="resync") == 0
    bucket = f"{P}heal_latency_seconds_bucket"
    assert value(m, bucket, trigger="advisory", le="0.0025") == 0
    assert value(m, bucket, trigger="advisory", le="0.005") == 1
    assert value(m, bucket, trigger="advisory", le="0.25") == 2
    assert value(m, bucket, trigger="advisory", le="+Inf") == 2
    assert value(m, f"{P}heal_latency_seconds_count", trigger="advisory") == 2
    assert value(m, f"{P}heal_latency_seconds_sum", trigger="advisory") == pytest.approx(0.204)


def consumer_done(
    result: Result, action: Action, *, at: float = 0.0, code: str = ""
) -> ConsumerDone:
    decision = ConsumerDecision(Consumer(stream="S", durable="worker", declared={}), action)
    outcome = ConsumerOutcome(decision, result, error="x" if code else "", code=code)
    return ConsumerDone(outcome, Trigger.RETRY, marked_at=10.0, answered_at=10.0 + at)


def test_consumer_outcomes_count_as_kind_consumer() -> None:
    """A declared consumer has its state series and zeroed counters from its
    declaration; a failed create counts its code and leaves it missing; a
    heal moves heals{kind=consumer} and the latency histogram by the time from
    the trigger to the answer; an update moves updates{kind=consumer}; each
    write is counted."""
    m = Metrics(process=False)
    reporter = MetricsReporter(m)
    worker = Consumer(stream="S", durable="worker", declared={})
    reporter.declared([], [worker])
    assert states_of(m, "consumer", "S/worker") == dict.fromkeys(STATES, 0)
    heals = f"{P}heals_total"
    assert value(m, heals, kind="consumer", trigger="retry") == 0
    base = PassReport(
        number=1, generation=0, scope=Scope.PARTIAL, trigger=None, started=0.0, finished=0.0
    )

    reporter.pass_done(
        replace(base, consumers=(consumer_done(Result.FAILED, Action.CREATE, code="10013"),))
    )
    assert value(m, f"{P}failures_total", code="10013") == 1
    assert states_of(m, "consumer", "S/worker")["missing"] == 1
    reporter.pass_done(
        replace(base, consumers=(consumer_done(Result.CREATED, Action.CREATE, at=0.004),))
    )
    assert value(m, heals, kind="consumer", trigger="retry") == 1
    assert value(m, f"{P}heal_latency_seconds_count", trigger="retry") == 1
    assert value(m, f"{P}heal_latency_seconds_bucket", trigger="retry", le="0.005") == 1
    assert value(m, f"{P}heal_latency_seconds_bucket", trigger="retry", le="0.0025") == 0
    assert states_of(m, "consumer", "S/worker")["in_sync"] == 1
    reporter.pass_done(replace(base, consumers=(consumer_done(Result.UPDATED, Action.UPDATE),)))
    assert value(m, f"{P}updates_total", kind="consumer", trigger="retry") == 1
    assert value(m, f"{P}writes_total") == 3
    reporter.pass_done(replace(base, consumers=(consumer_done(Result.BLOCKED, Action.BLOCKED),)))
    assert states_of(m, "consumer", "S/worker")["blocked"] == 1
    reporter.declared([])
    assert 'kind="consumer",name="S/worker"' not in m.render().decode()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=30))
def test_latency_buckets_count_every_heal_at_or_under_their_bound(seconds: list[float]) -> None:
    """Property: each cumulative bucket holds exactly the heals that took at
    most its bound; the buckets span 1 ms .. 30 s."""
    m = Metrics(process=False)
    for s in seconds:
        m.healed("kv", "resync", s)
    assert HEAL_BUCKETS[0] == 0.001
    assert HEAL_BUCKETS[-1] == 30.0
    for bound in HEAL_BUCKETS:
        expected = sum(1 for s in seconds if s <= bound)
        got = value(m, f"{P}heal_latency_seconds_bucket", trigger="resync", le=str(bound))
        assert got == (expected if seconds else None)


def test_heal_and_update_counters_start_at_zero_for_every_declared_kind_and_trigger() -> None:
    """So a first heal is an increase Prometheus can see; the trigger list is
    the daemon's own."""
    assert set(TRIGGERS) == {str(t) for t in Trigger}
    m = Metrics(process=False)
    m.declare([("stream", "A"), ("kv", "b")])
    for kind in ("stream", "kv"):
        for trigger in TRIGGERS:
            assert value(m, f"{P}heals_total", kind=kind, trigger=trigger) == 0
            assert value(m, f"{P}updates_total", kind=kind, trigger=trigger) == 0
    assert value(m, f"{P}heals_total", kind="object_store", trigger="advisory") is None
    m.updated("kv", "reload")
    assert value(m, f"{P}updates_total", kind="kv", trigger="reload") == 1


def test_resource_state_is_one_hot() -> None:
    """The reported state is 1 and every other state of that resource is 0;
    a new declaration starts with every state at 0."""
    m = Metrics(process=False)
    m.declare([("stream", "ORDERS"), ("kv", "settings")])
    assert states_of(m, "kv", "settings") == dict.fromkeys(STATES, 0)
    for current in ("missing", "in_sync", "blocked", "newer_spec", "failed", "drifted"):
        m.resource_state("stream", "ORDERS", current)
        assert states_of(m, "stream", "ORDERS") == {s: float(s == current) for s in STATES}


def test_a_reload_drops_the_series_of_resources_no_longer_declared() -> None:
    """declare() after a reload removes every state series of a removed
    resource, keeps the others' values, and a late report cannot revive it."""
    m = Metrics(process=False)
    m.declare([("stream", "OLD"), ("stream", "KEPT")])
    m.resource_state("stream", "KEPT", "in_sync")
    m.resource_state("stream", "OLD", "missing")
    m.declare([("stream", "KEPT"), ("kv", "new")])
    text = m.render().decode()
    assert 'name="OLD"' not in text
    assert value(m, f"{P}resource_state", kind="stream", name="KEPT", state="in_sync") == 1
    assert value(m, f"{P}resource_state", kind="kv", name="new", state="missing") == 0
    m.resource_state("stream", "OLD", "missing")
    assert 'name="OLD"' not in m.render().decode()
    states = list(text_string_to_metric_families(m.render().decode()))
    (family,) = (f for f in states if f.name == f"{P}resource_state")
    assert len(family.samples) == 2 * len(STATES)


def test_an_unknown_state_is_refused() -> None:
    m = Metrics(process=False)
    m.declare([("stream", "A")])
    with pytest.raises(ValueError, match="unknown resource state 'gone'"):
        m.resource_state("stream", "A", "gone")


def test_passes_time_the_histogram_and_only_an_ok_full_pass_stamps_the_time() -> None:
    """pass_done() observes every pass by scope and counts it by result; the
    last-success timestamp moves only for a full pass that was ok."""
    now = [1000.0]
    m = Metrics(clock=lambda: now[0], process=False)
    stamp = f"{P}last_full_pass_success_timestamp_seconds"
    assert value(m, stamp) == 0
    m.pass_done(0.01, full=False, ok=True)
    now[0] = 1001.0
    m.pass_done(0.5, full=True, ok=False)
    assert value(m, stamp) == 0
    now[0] = 1002.0
    m.pass_done(0.2, full=True, ok=True)
    assert value(m, stamp) == 1002.0
    assert value(m, f"{P}pass_duration_seconds_count", scope="full") == 2
    assert value(m, f"{P}pass_duration_seconds_count", scope="partial") == 1
    assert value(m, f"{P}passes_total", scope="full", result="failed") == 1
    assert value(m, f"{P}passes_total", scope="full", result="ok") == 1
    assert value(m, f"{P}passes_total", scope="partial", result="ok") == 1


def test_connection_writes_reloads_and_build_info() -> None:
    m = Metrics(process=False)
    assert value(m, f"{P}broker_connected") == 0
    m.connected(True)
    assert value(m, f"{P}broker_connected") == 1
    m.connected(False)
    assert value(m, f"{P}broker_connected") == 0
    m.reconnected()
    m.reconnected()
    assert value(m, f"{P}broker_reconnects_total") == 2
    m.writes(3)
    m.writes()
    assert value(m, f"{P}writes_total") == 4
    assert value(m, f"{P}config_last_reload_successful") == 1
    assert value(m, f"{P}config_reloads_total", result="failed") == 0
    m.reload(False)
    assert value(m, f"{P}config_last_reload_successful") == 0
    assert value(m, f"{P}config_reloads_total", result="failed") == 1
    m.reload(True)
    assert value(m, f"{P}config_last_reload_successful") == 1
    assert value(m, f"{P}config_reloads_total", result="ok") == 1
    info = f"{P}build_info"
    assert value(m, info, version=__version__, nats_server_version="") == 1
    m.build_info("9.9.9", "2.15.1")
    assert value(m, info, version="9.9.9", nats_server_version="2.15.1") == 1
    assert value(m, info, version=__version__, nats_server_version="") is None


def test_failures_are_counted_by_code() -> None:
    m = Metrics(process=False)
    m.failure("10047")
    m.failure("10047")
    m.failure("TimeoutError")
    assert value(m, f"{P}failures_total", code="10047") == 2
    assert value(m, f"{P}failures_total", code="TimeoutError") == 1
    for n in range(200):  # a broker answering with ever new codes
        m.failure(str(20_000 + n))
    codes = {s.labels["code"] for s in families(m)[f"{P}failures"].samples}
    assert len(codes) == MAX_FAILURE_CODES + 1
    assert value(m, f"{P}failures_total", code=OTHER_CODE) == 200 - (MAX_FAILURE_CODES - 2)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.text(max_size=70), max_size=120))
def test_failure_codes_cannot_grow_the_series_without_bound(codes: list[str]) -> None:
    """Property: whatever codes arrive, every label is a short token or
    "other", there are at most MAX_FAILURE_CODES + 1 of them, and no failure
    goes uncounted."""
    m = Metrics(process=False)
    for code in codes:
        m.failure(code)
    (family,) = (f for f in families(m).values() if f.name == f"{P}failures")
    labels = [s.labels["code"] for s in family.samples if s.name.endswith("_total")]
    assert len(labels) <= MAX_FAILURE_CODES + 1
    assert all(re.fullmatch(r"[0-9]{1,6}|[A-Za-z][A-Za-z0-9_]{0,47}", c) for c in labels)
    assert sum(s.value for s in family.samples if s.name.endswith("_total")) == len(codes)
    if any(not re.fullmatch(r"[0-9]{1,6}|[A-Za-z][A-Za-z0-9_]{0,47}", c) for c in codes):
        assert OTHER_CODE in labels


# --- promtool -------------------------------------------------------------------------


def test_promtool_check_metrics_accepts_the_exposition() -> None:
    """`promtool check metrics` finds no problem (naming, units, HELP, types)."""
    run = subprocess.run(
        [promtool(), "check", "metrics"],
        input=busy_metrics().render(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == b""
    assert run.stderr.strip() == b""


def test_promtool_finds_a_badly_named_metric() -> None:
    """The check above can fail: a counter without _total is reported."""
    bad = b"# HELP bad_things Bad.\n# TYPE bad_things counter\nbad_things 1\n"
    run = subprocess.run(
        [promtool(), "check", "metrics"], input=bad, capture_output=True, timeout=30, check=False
    )
    assert run.returncode != 0
    assert b"_total" in run.stdout + run.stderr


def test_the_rules_pass_promtool_check_rules() -> None:
    run = subprocess.run(
        [promtool(), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 5 rules found" in run.stdout


def test_every_alert_has_a_unit_test_and_they_pass() -> None:
    """`promtool test rules` passes, and each alert has a firing case and a
    quiet case in the test file."""
    run = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=RULE_TESTS.parent,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.MULTILINE))
    assert alerts == {
        "KanadeWatchdogResourceMissing",
        "KanadeWatchdogResourceDrifted",
        "KanadeWatchdogBrokerUnreachable",
        "KanadeWatchdogNoSuccessfulPass",
        "KanadeWatchdogDown",
    }
    cases = re.findall(
        r"alertname: (\w+)\n\s+exp_alerts:( \[\])?", RULE_TESTS.read_text(), re.MULTILINE
    )
    for alert in alerts:
        assert (alert, " []") in cases, f"{alert} has no quiet case"
        assert (alert, "") in cases, f"{alert} has no firing case"


def test_a_broken_rule_fails_its_unit_test(tmp_path: Path) -> None:
    """The unit tests can fail: with the missing alert's `for` cut to 10 s, the
    resource healed after 45 s would have fired."""
    rules = RULES.read_text().replace("        for: 1m\n", "        for: 10s\n", 1)
    (tmp_path / RULES.name).write_text(rules)
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    run = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert run.returncode != 0
    assert "KanadeWatchdogResourceMissing" in run.stdout + run.stderr


# --- names the rules and the dashboard rely on ----------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def exposed_sample_names() -> set[str]:
    return {s.name for f in families(busy_metrics()).values() for s in f.samples}


def test_every_metric_the_rules_and_the_dashboard_name_is_exposed() -> None:
    """No alert or panel waits on a metric name that does not exist."""
    exposed = exposed_sample_names()
    texts = [RULES.read_text(), *dashboard_exprs()]
    named = {n for text in texts for n in re.findall(r"\b(?:kanade_watchdog|process)_\w+", text)}
    assert named
    assert named - exposed == set()


def test_the_dashboard_shows_heals_states_and_the_latency_histogram() -> None:
    board = dashboard()
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert all({"x", "y", "w", "h"} <= set(p["gridPos"]) for p in panels)
    by_expr = {t["expr"]: p for p in panels for t in p.get("targets", [])}
    heatmaps = [p for e, p in by_expr.items() if "heal_latency_seconds_bucket" in e]
    assert any(p["type"] == "heatmap" and p["targets"][0]["format"] == "heatmap" for p in heatmaps)
    assert any(f"{P}heals_total" in e for e in by_expr)
    assert any(f"{P}resource_state" in e and p["type"] == "table" for e, p in by_expr.items())
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "job", "instance"}
