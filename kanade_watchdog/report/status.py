"""What the daemon knows about each resource, summed up in one line.

Pure bookkeeping fed by `worker` after every outcome. It answers the two
questions systemd asks: is every declared resource present on the broker
(READY=1), and what is the one-line STATUS= right now. `daemon` forwards
changes to `notify`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kanade_watchdog.core.cluster import ClusterFacts
from kanade_watchdog.core.outcome import Result
from kanade_watchdog.model.resources import Resource


@dataclass
class _Entry:
    result: Result | None = None
    present: bool = False
    reason: str = ""


class StatusBoard:
    def __init__(
        self, resources: Iterable[Resource], *, on_change: Callable[[], None] | None = None
    ) -> None:
        self._entries: dict[str, _Entry] = {}
        self._labels: dict[str, str] = {}
        self.on_change = on_change
        self.broker_text = ""  # non-empty while the broker is unreachable
        self.last_heal: tuple[str, float] | None = None  # (label, wall time)
        self.last_pass: float | None = None
        self.last_pass_generation = -1  # the config generation the last pass ran on
        self.facts = ClusterFacts()
        self.declare(resources)

    def declare(self, resources: Iterable[Resource]) -> None:
        old = self._entries
        self._entries = {r.stream: old.get(r.stream, _Entry()) for r in resources}
        self._labels = {r.stream: r.label for r in resources}
        self._changed()

    def set(self, res: Resource, result: Result, *, present: bool | None, reason: str) -> None:
        entry = self._entries.get(res.stream)
        if entry is None:  # dropped by a reload while the pass ran
            return
        entry.result = result
        if present is not None:
            entry.present = present
        if result in (Result.CREATED, Result.UPDATED):
            entry.present = True
        entry.reason = reason
        self._changed()

    def healed(self, res: Resource, _monotonic: float) -> None:
        self.last_heal = (res.label, time.time())

    def cluster(self, facts: ClusterFacts) -> None:
        if facts != self.facts:
            self.facts = facts
            self._changed()

    def pass_done(self, monotonic: float, generation: int = 0) -> None:
        self.last_pass = monotonic
        self.last_pass_generation = generation
        self._changed()

    def broker_down(self, text: str) -> None:
        self.broker_text = text
        self._changed()

    def broker_up(self) -> None:
        self.broker_text = ""
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # --- questions -----------------------------------------------------------------

    @property
    def total(self) -> int:
        return len(self._entries)

    def all_present(self) -> bool:
        return all(e.present for e in self._entries.values())

    def labels_with(self, *results: Result) -> list[str]:
        return [self._labels[s] for s, e in self._entries.items() if e.result in results]

    def missing(self) -> list[str]:
        return [self._labels[s] for s, e in self._entries.items() if not e.present]

    def line(self) -> str:
        """The STATUS= text: the most urgent fact first."""
        if self.broker_text:
            return self.broker_text
        ok = len(self.labels_with(Result.IN_SYNC, Result.CREATED, Result.UPDATED))
        parts = [f"{ok}/{self.total} in sync"]
        blocked = self.labels_with(Result.BLOCKED)
        newer = self.labels_with(Result.NEWER_SPEC)
        failed = self.labels_with(Result.FAILED)
        if blocked:
            parts.append(f"{len(blocked)} blocked: {_few(blocked)}")
        if newer:
            parts.append(f"{len(newer)} newer spec present: {_few(newer)}")
        if failed:
            parts.append(f"{len(failed)} failing: {_few(failed)}")
        if self.facts.leaderless:
            parts.append(
                f"{len(self.facts.leaderless)} without leader: {_few(self.facts.leaderless)}"
            )
        if self.facts.behind:
            parts.append(f"{len(self.facts.behind)} replicas behind: {_few(self.facts.behind)}")
        missing = self.missing()
        if missing and self.last_pass is not None:
            parts.append(f"{len(missing)} missing: {_few(missing)}")
        if self.last_heal:
            label, at = self.last_heal
            parts.append(f"last heal {label} {time.strftime('%H:%M:%S', time.localtime(at))}")
        return ", ".join(parts)


def _few(labels: list[str], limit: int = 3) -> str:
    shown = ", ".join(labels[:limit])
    return shown + (f" +{len(labels) - limit} more" if len(labels) > limit else "")
