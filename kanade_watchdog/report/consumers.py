"""How consumer decisions and outcomes read in plan, apply and --json.

Kind `consumer`, named `STREAM/DURABLE`, in the same shapes `render` gives
streams, so a reader of `--json` handles one more kind and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kanade_watchdog.core.consumer_plan import ConsumerDecision, ConsumerOutcome
from kanade_watchdog.core.plan import Action
from kanade_watchdog.core.result import Result
from kanade_watchdog.model.consumers import CONSUMER_KIND
from kanade_watchdog.model.printable import escape
from kanade_watchdog.report.render import _MARK, _change_json, change_text


def decision_json(d: ConsumerDecision) -> dict[str, Any]:
    return {
        "kind": CONSUMER_KIND,
        "name": d.consumer.name,
        "stream": d.consumer.stream,
        "action": str(d.action),
        "changes": [_change_json(c) for c in d.changes],
        "reason": d.reason,
        "at_stake": [],
        "warnings": [],
        "resume_from": d.resume_from,
    }


def outcome_json(o: ConsumerOutcome) -> dict[str, Any]:
    out = decision_json(o.decision)
    out["result"] = str(o.result)
    out["error"] = o.error
    return out


def decision_lines(d: ConsumerDecision, *, verbose: bool = False) -> list[str]:
    if d.action is Action.IN_SYNC and not verbose:
        return []
    head = f"{_MARK[d.action]} {CONSUMER_KIND} {escape(d.consumer.name)}: {d.action}"
    if d.resume_from is not None:
        head += f" (resumes at stream sequence {d.resume_from})"
    if d.reason:
        head += f" ({escape(d.reason)})"
    return [head, *(f"    {change_text(c)}" for c in d.changes)]


def outcome_lines(o: ConsumerOutcome, *, verbose: bool = False) -> list[str]:
    d = o.decision
    if d.action is Action.IN_SYNC and not verbose:
        return []
    text = f"{CONSUMER_KIND} {escape(d.consumer.name)}: {o.result}"
    if o.result is Result.UPDATED:
        text += " (" + "; ".join(change_text(c) for c in d.changes) + ")"
    if o.result in (Result.BLOCKED, Result.NEWER_SPEC):
        text += f" ({escape(d.reason)})"
    if o.error:
        text += f": {escape(o.error)}"
    return [text]


def pending(decisions: Sequence[ConsumerDecision]) -> bool:
    return any(d.action is not Action.IN_SYNC for d in decisions)
