"""`check`: the monitoring-plugin line (Nagios/Icinga) and its JSON twin.

Pure formatting of a plan's decisions and the cluster facts into one status
(OK, WARNING, CRITICAL, UNKNOWN), its text and its perfdata. `cli` prints it;
the daemon's `/status` serves the same JSON from the status board.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kanade_watchdog.core.cluster import ClusterFacts
from kanade_watchdog.core.plan import Action, Decision
from kanade_watchdog.model import exitcodes
from kanade_watchdog.model.errors import BrokerError, BrokerUnavailable, PermissionDenied
from kanade_watchdog.model.resources import kind_word
from kanade_watchdog.report.render import JSON_FORMAT, Undeclared, failure_json


def broker_problem(exc: BrokerError) -> str:
    """A broker error as `check` words it: the kind of trouble first."""
    text = str(exc)
    if isinstance(exc, PermissionDenied):
        return text if text.startswith("permission denied") else f"permission denied: {text}"
    if isinstance(exc, BrokerUnavailable):
        return f"broker unreachable: {text}"
    return f"broker error: {text}"


_CHECK_CODES = {
    "OK": exitcodes.CHECK_OK,
    "WARNING": exitcodes.CHECK_WARNING,
    "CRITICAL": exitcodes.CHECK_CRITICAL,
    "UNKNOWN": exitcodes.CHECK_UNKNOWN,
}

# (JSON and perfdata name, words in the status text, status it raises), worst first.
_CHECK_GROUPS = (
    ("missing", "missing", "CRITICAL"),
    ("leaderless", "no leader", "CRITICAL"),
    ("drifted", "drifted", "WARNING"),
    ("blocked", "blocked", "WARNING"),
    ("newer_spec", "newer spec present", "WARNING"),
    ("replicas_behind", "replicas behind", "WARNING"),
    ("suspicious_marker", "suspicious marker not obeyed", "WARNING"),
)


# The perfdata order monitoring set-ups have always seen.
# Keys are only ever added at the end.
_PERF_ORDER = (
    "missing",
    "drifted",
    "blocked",
    "newer_spec",
    "leaderless",
    "replicas_behind",
    "suspicious_marker",
)


@dataclass(frozen=True)
class CheckReport:
    """One `check` result: the plugin line and its JSON twin say the same."""

    status: str  # OK, WARNING, CRITICAL, UNKNOWN
    text: str
    groups: Mapping[str, list[str]] = field(default_factory=dict)
    perf: Mapping[str, int] = field(default_factory=dict)  # empty when check failed
    seconds: float = 0.0
    problems: Sequence[str] = ()  # why check could not look (then perf is empty)
    undeclared: Sequence[str] = ()  # on the broker, not in the file (report only)

    @property
    def code(self) -> int:
        return _CHECK_CODES[self.status]

    def line(self) -> str:
        head = f"JETSTREAM {self.status} - {self.text}"
        if not self.perf:
            return head
        perf = " ".join(f"{k}={v}" for k, v in self.perf.items())
        return f"{head} | {perf} time={self.seconds:.3f}s"

    def json(self, *, config: str) -> str:
        extra = {"status": self.status, "text": self.text}
        if self.problems:
            return failure_json(config=config, problems=self.problems, exit_code=self.code, **extra)
        doc = {
            "format": JSON_FORMAT,
            "config": config,
            **extra,
            **{name: list(self.groups.get(name, [])) for name, _, _ in _CHECK_GROUPS},
            "undeclared": list(self.undeclared),
            "perfdata": {**self.perf, "time": round(self.seconds, 4)},
            "seconds": round(self.seconds, 4),
            "error": "",
            "problems": [],
            "exit_code": self.code,
        }
        return json.dumps(doc, indent=2)


def check_report(
    decisions: Sequence[Decision],
    facts: ClusterFacts,
    *,
    seconds: float,
    undeclared: Sequence[Undeclared] = (),
    needs_newer: str = "",
    consumers: Sequence[tuple[Action, str]] = (),
) -> CheckReport:
    """Every fact at once, worst status first: a CRITICAL still names what
    drifted or is blocked. `consumers` are (action, `STREAM/DURABLE`)."""
    by_action: dict[Action, list[str]] = {a: [] for a in Action}
    for d in decisions:
        by_action[d.action].append(d.resource.label)
    for action, name in consumers:
        by_action[action].append(f"consumer:{name}")
    groups = {
        "missing": by_action[Action.CREATE],
        "leaderless": list(facts.leaderless),
        "drifted": by_action[Action.UPDATE],
        "blocked": by_action[Action.BLOCKED],
        "newer_spec": by_action[Action.NEWER_SPEC],
        "replicas_behind": list(facts.behind),
        # Someone stamped a spec_version too far ahead to believe: the marker
        # is not obeyed, but an operator should know (docs/SECURITY.md).
        "suspicious_marker": [d.resource.label for d in decisions if d.suspicious_marker],
    }
    total = len(decisions) + len(consumers)
    perf = {
        "resources": total,
        "in_sync": len(by_action[Action.IN_SYNC]),
        **{name: len(groups[name]) for name in _PERF_ORDER},
        # Report only: what the broker holds beyond the file never raises the status.
        "undeclared": len(undeclared),
    }
    raised = [status for name, _, status in _CHECK_GROUPS if groups[name]]
    status = "CRITICAL" if "CRITICAL" in raised else "WARNING" if raised else "OK"
    parts = [
        f"{words}: {', '.join(groups[name])}" for name, words, _ in _CHECK_GROUPS if groups[name]
    ]
    if needs_newer:  # which declared fields the connected server is too old for
        parts.append(needs_newer)
    text = "; ".join(parts) if parts else f"{total}/{total} in sync"
    return CheckReport(
        status,
        text,
        groups=groups,
        perf=perf,
        seconds=seconds,
        undeclared=[f"{kind_word(kind)} {name}" for kind, name in undeclared],
    )


def check_failure(status: str, problems: Sequence[str]) -> CheckReport:
    """`check` could not look: broker trouble (CRITICAL) or a bad config (UNKNOWN)."""
    return CheckReport(status, problems[0], problems=problems)
