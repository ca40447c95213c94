"""What the daemon knows about each resource, summed up in one line.

A `ports.Reporter`: each pass report updates the resources it names (O(1)
each), and the board keeps the groups the line names (results with a
reason, missing, too new for the server) up to date as it goes, so
`line()` costs O(what it shows), not O(resources): `systemd` asks once per
pass, and a heal's partial pass at 10,000 declared resources must not pay
a walk over all of them. It
answers what systemd and the HTTP endpoint ask: is every declared resource
present on the broker, when did the last full pass succeed, and what is
the one-line summary right now, and what `check --json` would say (the
HTTP /status).
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from kanade_watchdog.core.cluster import ClusterFacts
from kanade_watchdog.core.plan import Action, Decision
from kanade_watchdog.core.ports import Quiet
from kanade_watchdog.core.reports import BrokerState, LinkState, PassReport, present_after
from kanade_watchdog.core.result import Result
from kanade_watchdog.core.undeclared import undeclared
from kanade_watchdog.model.consumers import Consumer
from kanade_watchdog.model.resources import Resource
from kanade_watchdog.report import check

_REASONED = (Result.BLOCKED, Result.NEWER_SPEC, Result.FAILED)


@dataclass(slots=True)  # one per declared resource
class _Entry:
    label: str
    index: int  # declaration order: the line names the first few of a group
    result: Result | None = None
    present: bool = False
    reason: str = ""
    decision: Decision | None = None  # the broker as last seen, as `check` would judge it


class StatusBoard(Quiet):
    def __init__(self, resources: Sequence[Resource]) -> None:
        self._entries: dict[str, _Entry] = {}
        self.broker_text = ""  # non-empty while the broker is unreachable
        self.last_heal: tuple[str, float] | None = None  # (label, wall time)
        self.server_version = ""  # what the connected server announced
        self.last_pass: float | None = None  # monotonic
        self.last_pass_generation = -1  # the config generation the last pass ran on
        self.last_full: float | None = None  # monotonic: the last full pass that read the list
        self.last_full_seconds = 0.0  # how long it took
        self.listed: frozenset[str] = frozenset()  # every stream name it saw on the broker
        self.facts = ClusterFacts()
        self.consumers_missing: frozenset[str] = frozenset()  # `STREAM/DURABLE`s
        # Kept as entries change: stream -> entry, for each group the line names.
        self._counts: Counter[Result] = Counter()
        self._grouped: dict[Result, dict[str, _Entry]] = {r: {} for r in _REASONED}
        self._missing: dict[str, _Entry] = {}
        self._too_new: dict[str, _Entry] = {}
        self.declared(resources)

    # --- what the reporters' protocol brings --------------------------------------

    def declared(self, resources: Sequence[Resource], consumers: Sequence[Consumer] = ()) -> None:
        old, self._entries = self._entries, {}
        self._counts.clear()
        for group in (*self._grouped.values(), self._missing, self._too_new):
            group.clear()
        for i, res in enumerate(resources):
            entry = self._entries[res.stream] = old.get(res.stream) or _Entry(res.label, i)
            entry.label, entry.index = res.label, i
            self._file(res.stream, entry)

    def broker(self, state: BrokerState) -> None:
        up = state.state is LinkState.UP
        self.broker_text = "" if up else f"waiting for broker {state.servers}"
        if up and state.server_version:
            self.server_version = state.server_version

    def pass_done(self, report: PassReport) -> None:
        for done in report.done:
            d = done.outcome.decision
            reason = d.reason if done.result in _REASONED else ""
            seen = d
            if done.result in (Result.CREATED, Result.UPDATED):
                self.last_heal = (d.resource.label, time.time())
                seen = Decision(d.resource, Action.IN_SYNC)  # what a look now would say
            self._set(d.resource, done.result, present=present_after(d), reason=reason, seen=seen)
        for failed in report.failed:
            reason = str(failed.error)
            self._set(
                failed.resource,
                Result.FAILED,
                present=failed.present,
                reason=reason,
                seen=failed.decision,
            )
        for held in report.held:
            d = held.decision
            self._set(d.resource, Result.BLOCKED, present=True, reason=held.reason, seen=d)
        if report.facts is not None:
            self.facts = report.facts
        if report.consumers_missing is not None:
            self.consumers_missing = report.consumers_missing
        self.last_pass = report.finished
        self.last_pass_generation = report.generation
        if report.listed is not None and report.cut is None:
            self.last_full = report.finished
            self.last_full_seconds = report.seconds
            self.listed = report.listed

    def _set(
        self,
        res: Resource,
        result: Result,
        *,
        present: bool | None,
        reason: str,
        seen: Decision | None,
    ) -> None:
        entry = self._entries.get(res.stream)
        if entry is None:  # dropped by a reload while the pass ran
            return
        if (
            seen is entry.decision
            and result is entry.result
            and reason == entry.reason
            and present in (None, entry.present)
            and result not in (Result.CREATED, Result.UPDATED)
        ):
            return  # as it was (a resync's in-sync resource): nothing to move
        self._unfile(res.stream, entry)
        if seen is not None:  # a failed read leaves the last known state
            entry.decision = seen
        entry.result = result
        if present is not None:
            entry.present = present
        if result in (Result.CREATED, Result.UPDATED):
            entry.present = True
        entry.reason = reason
        self._file(res.stream, entry)

    def _file(self, stream: str, entry: _Entry) -> None:
        """Count `entry` in the groups it belongs to now."""
        if entry.result is not None:
            self._counts[entry.result] += 1
            if entry.result in self._grouped:
                self._grouped[entry.result][stream] = entry
        if not entry.present:
            self._missing[stream] = entry
        if entry.decision is not None and entry.decision.too_new:
            self._too_new[stream] = entry

    def _unfile(self, stream: str, entry: _Entry) -> None:
        """Take `entry` out of the groups it was counted in, before it changes."""
        if entry.result is not None:
            self._counts[entry.result] -= 1
            self._grouped.get(entry.result, {}).pop(stream, None)
        self._missing.pop(stream, None)
        self._too_new.pop(stream, None)

    # --- questions -----------------------------------------------------------------

    @property
    def total(self) -> int:
        return len(self._entries)

    def all_present(self) -> bool:
        return not self._missing

    def missing(self) -> list[str]:
        missing = [e.label for e in _in_order(self._missing)]
        return missing + [f"consumer:{name}" for name in sorted(self.consumers_missing)]

    def ready(self, *, now: float, max_age: float) -> tuple[bool, str]:
        """Ready: the broker is reachable, every declared resource exists, and a
        full pass read the broker within `max_age` seconds of `now`
        (monotonic). Otherwise False and the reason, in one line."""
        if self.broker_text:
            return False, f"broker unreachable: {self.broker_text}"
        if self.last_full is None:
            return False, "no full pass yet"
        missing = self.missing()
        if missing:
            return False, f"{len(missing)} missing: {_few(missing)}"
        age = now - self.last_full
        if age > max_age:
            return False, f"last full pass {age:.0f}s ago (more than {max_age:g}s)"
        return True, ""

    def check_json(self, *, config: str, ignore: Sequence[str] = ()) -> str:
        """What `check --json` would print, from what the daemon last saw."""
        if self.broker_text:
            problem = f"broker unreachable: {self.broker_text}"
            return check.check_failure("CRITICAL", [problem]).json(config=config)
        decisions = [e.decision for e in self._entries.values() if e.decision is not None]
        if len(decisions) < len(self._entries) or self.last_full is None:
            problem = "not every declared resource has been looked at yet"
            return check.check_failure("UNKNOWN", [problem]).json(config=config)
        extra = undeclared(set(self._entries), self.listed, ignore)
        report = check.check_report(
            decisions, self.facts, seconds=self.last_full_seconds, undeclared=extra
        )
        return report.json(config=config)

    def line(self) -> str:
        """The STATUS= text: the most urgent fact first. O(what it names)."""
        if self.broker_text:
            return self.broker_text
        counts = self._counts
        ok = counts[Result.IN_SYNC] + counts[Result.CREATED] + counts[Result.UPDATED]
        parts = [f"{ok}/{self.total} in sync"]
        for result, words in (
            (Result.BLOCKED, "blocked"),
            (Result.NEWER_SPEC, "newer spec present"),
            (Result.FAILED, "failing"),
        ):
            group = self._grouped[result]
            if group:
                parts.append(f"{len(group)} {words}: {_few_of(group)}")
        if self.facts.leaderless:
            parts.append(
                f"{len(self.facts.leaderless)} without leader: {_few(self.facts.leaderless)}"
            )
        if self.facts.behind:
            parts.append(f"{len(self.facts.behind)} replicas behind: {_few(self.facts.behind)}")
        if self._missing and self.last_pass is not None:
            parts.append(f"{len(self._missing)} missing: {_few_of(self._missing)}")
        if self._too_new:  # a declared field the connected server cannot keep
            too_new = [
                f"{e.label} needs {', '.join(e.decision.too_new)}"
                for e in _in_order(self._too_new, limit=3)
                if e.decision is not None
            ]
            server = f"nats-server {self.server_version}" if self.server_version else "the server"
            parts.append(f"{server} too old: {_few(too_new, total=len(self._too_new))}")
        if self.last_heal:
            label, at = self.last_heal
            parts.append(f"last heal {label} {time.strftime('%H:%M:%S', time.localtime(at))}")
        return ", ".join(parts)


def _in_order(group: dict[str, _Entry], limit: int | None = None) -> list[_Entry]:
    """A group's entries in declaration order; only the first `limit` of them."""
    if limit is None:
        return sorted(group.values(), key=lambda e: e.index)
    return heapq.nsmallest(limit, group.values(), key=lambda e: e.index)


def _few_of(group: dict[str, _Entry], limit: int = 3) -> str:
    return _few([e.label for e in _in_order(group, limit)], limit, total=len(group))


def _few(labels: list[str], limit: int = 3, *, total: int | None = None) -> str:
    """The first `limit` labels, and how many more there are (of `total`)."""
    total = len(labels) if total is None else total
    shown = ", ".join(labels[:limit])
    return shown + (f" +{total - limit} more" if total > limit else "")
