"""A reporter that keeps everything the daemon reports, for tests to assert on
structured outcomes (`core.reports`) instead of log text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kanade_watchdog.core.reports import (
    BrokerState,
    Done,
    Failed,
    Held,
    PassReport,
    Reloaded,
    RunState,
)
from kanade_watchdog.core.result import Result
from kanade_watchdog.model.consumers import Consumer
from kanade_watchdog.model.resources import Resource


@dataclass
class Capture:
    states: list[RunState] = field(default_factory=list)
    declarations: list[tuple[str, ...]] = field(default_factory=list)  # streams, each time
    brokers: list[BrokerState] = field(default_factory=list)
    passes: list[PassReport] = field(default_factory=list)
    reloads: list[Reloaded] = field(default_factory=list)

    # --- the Reporter protocol ------------------------------------------------------

    def run_state(self, state: RunState) -> None:
        self.states.append(state)

    def declared(self, resources: Sequence[Resource], consumers: Sequence[Consumer] = ()) -> None:
        self.declarations.append(tuple(r.stream for r in resources))

    def broker(self, state: BrokerState) -> None:
        self.brokers.append(state)

    def pass_done(self, report: PassReport) -> None:
        self.passes.append(report)

    def reloaded(self, result: Reloaded) -> None:
        self.reloads.append(result)

    # --- questions ------------------------------------------------------------------

    def done(self, result: Result | None = None, *, stream: str = "") -> list[Done]:
        return [
            d
            for p in self.passes
            for d in p.done
            if (result is None or d.result is result)
            and (not stream or d.resource.stream == stream)
        ]

    def failed(self, stream: str = "") -> list[Failed]:
        return [
            f for p in self.passes for f in p.failed if not stream or f.resource.stream == stream
        ]

    def held(self, stream: str = "") -> list[Held]:
        return [
            h
            for p in self.passes
            for h in p.held
            if not stream or h.decision.resource.stream == stream
        ]
