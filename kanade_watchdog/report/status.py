"""What the daemon knows about each resource, summed up in one line.

A `ports.Reporter`: each pass report updates the resources it names (O(1)
each) and nothing is rendered then; `line()` renders the STATUS= text once,
when asked (`systemd` asks once per pass and per connection change). It
answers what systemd and the HTTP endpoint ask: is every declared resource
present on the broker, when did the last full pass succeed, and what is
the one-line summary right now.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from kanade_watchdog.core.cluster import ClusterFacts
from kanade_watchdog.core.outcome import Result
from kanade_watchdog.core.ports import Quiet
from kanade_watchdog.core.reports import BrokerState, LinkState, PassReport, present_after
from kanade_watchdog.model.resources import Resource

_REASONED = (Result.BLOCKED, Result.NEWER_SPEC, Result.FAILED)


@dataclass
class _Entry:
    label: str
    result: Result | None = None
    present: bool = False
    reason: str = ""


class StatusBoard(Quiet):
    def __init__(self, resources: Sequence[Resource]) -> None:
        self._entries: dict[str, _Entry] = {}
        self.broker_text = ""  # non-empty while the broker is unreachable
        self.last_heal: tuple[str, float] | None = None  # (label, wall time)
        self.last_pass: float | None = None  # monotonic
        self.last_pass_generation = -1  # the config generation the last pass ran on
        self.last_full_ok: float | None = None  # monotonic: the last full pass without a failure
        self.facts = ClusterFacts()
        self.declared(resources)

    # --- what the reporters' protocol brings --------------------------------------

    def declared(self, resources: Sequence[Resource]) -> None:
        old, self._entries = self._entries, {}
        for res in resources:
            entry = self._entries[res.stream] = old.get(res.stream) or _Entry(res.label)
            entry.label = res.label

    def broker(self, state: BrokerState) -> None:
        up = state.state is LinkState.UP
        self.broker_text = "" if up else f"waiting for broker {state.servers}"

    def pass_done(self, report: PassReport) -> None:
        for done in report.done:
            d = done.outcome.decision
            reason = d.reason if done.result in _REASONED else ""
            self._set(d.resource, done.result, present=present_after(d), reason=reason)
            if done.result in (Result.CREATED, Result.UPDATED):
                self.last_heal = (d.resource.label, time.time())
        for failed in report.failed:
            self._set(
                failed.resource, Result.FAILED, present=failed.present, reason=str(failed.error)
            )
        for held in report.held:
            self._set(held.decision.resource, Result.BLOCKED, present=True, reason=held.reason)
        if report.facts is not None:
            self.facts = report.facts
        self.last_pass = report.finished
        self.last_pass_generation = report.generation
        if report.listed is not None and report.ok:
            self.last_full_ok = report.finished

    def _set(self, res: Resource, result: Result, *, present: bool | None, reason: str) -> None:
        entry = self._entries.get(res.stream)
        if entry is None:  # dropped by a reload while the pass ran
            return
        entry.result = result
        if present is not None:
            entry.present = present
        if result in (Result.CREATED, Result.UPDATED):
            entry.present = True
        entry.reason = reason

    # --- questions -----------------------------------------------------------------

    @property
    def total(self) -> int:
        return len(self._entries)

    def all_present(self) -> bool:
        return all(e.present for e in self._entries.values())

    def labels_with(self, *results: Result) -> list[str]:
        return [e.label for e in self._entries.values() if e.result in results]

    def missing(self) -> list[str]:
        return [e.label for e in self._entries.values() if not e.present]

    def line(self) -> str:
        """The STATUS= text: the most urgent fact first. O(resources)."""
        if self.broker_text:
            return self.broker_text
        counts = dict.fromkeys(Result, 0)
        grouped: dict[Result, list[str]] = {r: [] for r in _REASONED}
        missing: list[str] = []
        for e in self._entries.values():
            if e.result is not None:
                counts[e.result] += 1
                if e.result in grouped:
                    grouped[e.result].append(e.label)
            if not e.present:
                missing.append(e.label)
        ok = counts[Result.IN_SYNC] + counts[Result.CREATED] + counts[Result.UPDATED]
        parts = [f"{ok}/{self.total} in sync"]
        for result, words in (
            (Result.BLOCKED, "blocked"),
            (Result.NEWER_SPEC, "newer spec present"),
            (Result.FAILED, "failing"),
        ):
            if grouped[result]:
                parts.append(f"{len(grouped[result])} {words}: {_few(grouped[result])}")
        if self.facts.leaderless:
            parts.append(
                f"{len(self.facts.leaderless)} without leader: {_few(self.facts.leaderless)}"
            )
        if self.facts.behind:
            parts.append(f"{len(self.facts.behind)} replicas behind: {_few(self.facts.behind)}")
        if missing and self.last_pass is not None:
            parts.append(f"{len(missing)} missing: {_few(missing)}")
        if self.last_heal:
            label, at = self.last_heal
            parts.append(f"last heal {label} {time.strftime('%H:%M:%S', time.localtime(at))}")
        return ", ".join(parts)


def _few(labels: list[str], limit: int = 3) -> str:
    shown = ", ".join(labels[:limit])
    return shown + (f" +{len(labels) - limit} more" if len(labels) > limit else "")
