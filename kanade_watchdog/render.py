"""Showing plans and outcomes: short lines for people, stable JSON for machines.

Pure formatting of `plan.Decision` and `apply.Outcome`; the `cli` prints
what this returns. The JSON shape (`"format": 1`) only ever gains keys.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from .apply import Outcome, Result, kind_word
from .plan import Action, Change, Decision, show

JSON_FORMAT = 1


def _change_json(change: Change) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    return {
        "field": change.field,
        "current": plain(change.current),
        "desired": plain(change.desired),
        "current_text": show(change.field, change.current),
        "desired_text": show(change.field, change.desired),
    }


def decision_json(d: Decision) -> dict[str, Any]:
    return {
        "kind": str(d.resource.kind),
        "name": d.resource.name,
        "stream": d.resource.stream,
        "action": str(d.action),
        "changes": [_change_json(c) for c in d.changes],
        "reason": d.reason,
        "at_stake": list(d.at_stake),
    }


def outcome_json(o: Outcome) -> dict[str, Any]:
    out = decision_json(o.decision)
    out["result"] = str(o.result)
    out["error"] = str(o.error) if o.error else ""
    return out


_MARK = {
    Action.CREATE: "+",
    Action.UPDATE: "~",
    Action.IN_SYNC: "=",
    Action.BLOCKED: "!",
    Action.NEWER_SPEC: "^",
}


def decision_lines(d: Decision, *, verbose: bool = False) -> list[str]:
    """One line per resource, then its changes indented. In-sync resources
    only when verbose: quiet when all is well."""
    if d.action is Action.IN_SYNC and not verbose:
        return []
    head = f"{_MARK[d.action]} {kind_word(d.resource.kind)} {d.resource.name}: {d.action}"
    if d.reason:
        head += f" ({d.reason})"
    lines = [head]
    lines += [f"    {c}" for c in d.changes]
    lines += [f"    WARNING data at stake: {s}" for s in d.at_stake]
    return lines


def plan_summary(decisions: Sequence[Decision]) -> str:
    counts = Counter(d.action for d in decisions)
    parts = [
        f"{counts[a]} {a}"
        for a in (Action.CREATE, Action.UPDATE, Action.BLOCKED, Action.NEWER_SPEC)
        if counts[a]
    ]
    total = len(decisions)
    if not parts:
        return f"{total}/{total} in sync"
    return f"{counts[Action.IN_SYNC]}/{total} in sync; " + ", ".join(parts)


def outcome_line(o: Outcome) -> str:
    d = o.decision
    text = f"{kind_word(d.resource.kind)} {d.resource.name}: {o.result}"
    if o.result is Result.UPDATED:
        text += " (" + "; ".join(str(c) for c in d.changes) + ")"
    if o.result in (Result.BLOCKED, Result.NEWER_SPEC):
        text += f" ({d.reason})"
    if o.error:
        text += f": {o.error}"
    return text


def apply_summary(outcomes: Sequence[Outcome]) -> str:
    counts = Counter(o.result for o in outcomes)
    order = (
        Result.CREATED,
        Result.UPDATED,
        Result.IN_SYNC,
        Result.BLOCKED,
        Result.NEWER_SPEC,
        Result.FAILED,
    )
    return ", ".join(f"{counts[r]} {r}" for r in order if counts[r])


def request_counts(counts: Mapping[str, int]) -> dict[str, int]:
    return {"total": sum(counts.values()), **dict(sorted(counts.items()))}


def report_json(
    *,
    in_sync: bool,
    summary: str,
    resources: list[dict[str, Any]],
    requests: Mapping[str, int],
    seconds: float,
) -> str:
    """The stable `--json` document of plan and apply."""
    return json.dumps(
        {
            "format": JSON_FORMAT,
            "in_sync": in_sync,
            "summary": summary,
            "resources": resources,
            "requests": request_counts(requests),
            "seconds": round(seconds, 4),
        },
        indent=2,
    )
