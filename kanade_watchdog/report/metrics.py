"""Prometheus metrics of the daemon, kept in a registry of their own.

`meter.MetricsReporter` calls the methods of `Metrics` with plain Python
values as facts happen (a resource observed, a heal acknowledged, a pass
done, a reload); `report.http` serves `render()` on /metrics. The text
format is written by prometheus-client alone. Nothing here knows the
worker, the broker or the config: the label values are the ones handed over.

Cardinality stays bounded by what the config declares: `resource_state`
holds one series per declared resource and state, and `declare()` drops the
series of resources a reload removed; the other labels take values from
small fixed sets (kinds, triggers, pass scopes, results) or, for failure
codes, are clamped to a short token and capped in number.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from .. import __version__

PREFIX = "kanade_watchdog"

STATES = ("in_sync", "missing", "drifted", "blocked", "newer_spec", "failed")

# The daemon's triggers (events.Trigger). Heal and update counters start at 0
# for each declared kind and each of these, so the first heal of a kind is a
# visible increase and not the birth of a series that rate() cannot see.
TRIGGERS = ("startup", "resync", "reconnect", "advisory", "reload", "retry", "verify")

# From a heal on the advisory path (a few ms on loopback) to one that waited
# for a resync or a broker's leader election (tens of seconds).
HEAL_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# A full pass over a large cluster can run past the heal range.
PASS_BUCKETS = (*HEAL_BUCKETS, 60.0, 120.0)

# The header for what generate_latest writes with its default escaping: the
# classic text format 0.0.4 (prometheus_client's choose_encoder("") pairs the
# two the same way).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# A failure code is the broker's err_code (digits) or a short exception class
# name. Anything else, and any code past the cap, is counted as "other" so a
# hostile or buggy source cannot grow the series without bound.
_CODE = re.compile(r"[0-9]{1,6}|[A-Za-z][A-Za-z0-9_]{0,47}")
MAX_FAILURE_CODES = 50
OTHER_CODE = "other"


class Metrics:
    """Every metric the daemon exposes, in its own `CollectorRegistry`.

    `clock` gives wall-clock seconds for the last-pass timestamp (injectable
    for tests). `process=False` leaves out the process_* and python_info
    collectors (they read /proc on every scrape).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, process: bool = True) -> None:
        self._clock = clock
        # The classic text format has no field for a series' creation time:
        # Prometheus would store every *_created as a gauge of its own, doubling
        # the series for nothing. The switch is process-wide; the daemon is the
        # only exporter in its process.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        if process:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)

        self._state = Gauge(
            f"{PREFIX}_resource_state",
            "1 for the state each declared resource was last seen in, 0 for the others.",
            ["kind", "name", "state"],
            registry=reg,
        )
        self._heals = Counter(
            f"{PREFIX}_heals",
            "Missing resources created again, by kind and by what triggered the pass.",
            ["kind", "trigger"],
            registry=reg,
        )
        self._updates = Counter(
            f"{PREFIX}_updates",
            "Drifted resources updated back to their declaration, by kind and trigger.",
            ["kind", "trigger"],
            registry=reg,
        )
        self._heal_latency = Histogram(
            f"{PREFIX}_heal_latency_seconds",
            "Seconds from a trigger's arrival to the broker's acknowledgement of the create.",
            ["trigger"],
            buckets=HEAL_BUCKETS,
            registry=reg,
        )
        self._pass_duration = Histogram(
            f"{PREFIX}_pass_duration_seconds",
            "Seconds a reconcile pass took; scope is full (every resource) or partial.",
            ["scope"],
            buckets=PASS_BUCKETS,
            registry=reg,
        )
        self._passes = Counter(
            f"{PREFIX}_passes",
            "Reconcile passes, by scope and result (ok, or failed when any resource failed).",
            ["scope", "result"],
            registry=reg,
        )
        self._last_full_pass = Gauge(
            f"{PREFIX}_last_full_pass_success_timestamp_seconds",
            "Unix time of the last full pass that completed without a failure; 0 before one.",
            registry=reg,
        )
        self._connected = Gauge(
            f"{PREFIX}_broker_connected",
            "1 while the connection to the broker is up.",
            registry=reg,
        )
        self._reconnects = Counter(
            f"{PREFIX}_broker_reconnects",
            "Times the connection to the broker came back after a loss.",
            registry=reg,
        )
        self._failures = Counter(
            f"{PREFIX}_failures",
            "Failed broker requests, by JetStream err_code or error class name.",
            ["code"],
            registry=reg,
        )
        self._writes = Counter(
            f"{PREFIX}_writes",
            "Create and update requests sent to the broker.",
            registry=reg,
        )
        self._reloads = Counter(
            f"{PREFIX}_config_reloads",
            "Configuration reloads, by result (ok, or failed when the old config was kept).",
            ["result"],
            registry=reg,
        )
        self._last_reload_ok = Gauge(
            f"{PREFIX}_config_last_reload_successful",
            "1 if the last configuration reload was applied (or none was asked for yet).",
            registry=reg,
        )
        self._build = Info(
            f"{PREFIX}_build",
            "The watchdog's version and the version of the nats-server it talks to.",
            registry=reg,
        )

        self._declared: set[tuple[str, str]] = set()
        self._kinds: set[str] = set()
        self._codes: set[str] = set()
        for result in ("ok", "failed"):
            self._reloads.labels(result=result)
        # A start only gets this far with a config that loaded.
        self._last_reload_ok.set(1)
        self.build_info(__version__, "")

    # --- what the daemon calls -------------------------------------------------------

    def declare(self, resources: Iterable[tuple[str, str]]) -> None:
        """The (kind, name) pairs the current config declares. Series of pairs
        no longer declared are dropped; new pairs start with every state at 0
        until their first observation."""
        wanted = set(resources)
        for kind, name in self._declared - wanted:
            for state in STATES:
                self._state.remove(kind, name, state)
        for kind, name in wanted - self._declared:
            for state in STATES:
                self._state.labels(kind, name, state).set(0)
        for kind in {kind for kind, _ in wanted} - self._kinds:
            for trigger in TRIGGERS:
                self._heals.labels(kind, trigger)
                self._updates.labels(kind, trigger)
            self._kinds.add(kind)
        self._declared = wanted

    def resource_state(self, kind: str, name: str, state: str) -> None:
        """One-hot: `state` becomes 1 and the others 0. The state is what the
        broker last showed, not what the last write did: a resource whose
        create failed is still "missing" (the alert counts on it), one just
        created or updated is "in_sync"; "failed" means it could not be read.
        An undeclared resource is ignored, so a late report after a reload
        cannot bring it back."""
        if state not in STATES:
            raise ValueError(f"unknown resource state {state!r}; expected one of {STATES}")
        if (kind, name) not in self._declared:
            return
        for each in STATES:
            self._state.labels(kind, name, each).set(1 if each == state else 0)

    def healed(self, kind: str, trigger: str, seconds: float) -> None:
        """A missing resource was created; `seconds` from the trigger's arrival
        to the broker's acknowledgement."""
        self._heals.labels(kind, trigger).inc()
        self._heal_latency.labels(trigger).observe(max(seconds, 0.0))

    def updated(self, kind: str, trigger: str) -> None:
        self._updates.labels(kind, trigger).inc()

    def pass_done(self, seconds: float, *, full: bool, ok: bool) -> None:
        scope = "full" if full else "partial"
        self._pass_duration.labels(scope).observe(max(seconds, 0.0))
        self._passes.labels(scope, "ok" if ok else "failed").inc()
        if full and ok:
            self._last_full_pass.set(self._clock())

    def connected(self, up: bool) -> None:
        self._connected.set(1 if up else 0)

    def reconnected(self) -> None:
        self._reconnects.inc()

    def failure(self, code: str) -> None:
        """One failed request: `code` is the broker's err_code as text, or a
        short class name for errors without one (e.g. "TimeoutError")."""
        if not _CODE.fullmatch(code):
            code = OTHER_CODE
        elif code not in self._codes:
            if len(self._codes) >= MAX_FAILURE_CODES:
                code = OTHER_CODE
            else:
                self._codes.add(code)
        self._failures.labels(code).inc()

    def writes(self, n: int = 1) -> None:
        self._writes.inc(n)

    def reload(self, ok: bool) -> None:
        self._reloads.labels("ok" if ok else "failed").inc()
        self._last_reload_ok.set(1 if ok else 0)

    def build_info(self, version: str, nats_server_version: str) -> None:
        """`nats_server_version` is "" until the first connection tells it."""
        self._build.info({"version": version, "nats_server_version": nats_server_version})

    # --- what the endpoint serves ----------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text format (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)
