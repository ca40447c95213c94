"""Showing plans, outcomes and check results: short lines for people, stable JSON
for machines.

Pure formatting of `plan.Decision`, `apply.Outcome` and the facts `check`
gathers; the `cli` prints what this returns, escaping every line
(`printable`), since names, subjects, metadata and error texts come from
the broker. Values in diffs read one way everywhere: text in double quotes,
quantities (durations, sizes, counts), booleans and `unlimited` bare. The
JSON shape (`"format": 1`) only ever gains keys.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kanade_watchdog.core.plan import Action, Change, Decision, Stake, show
from kanade_watchdog.core.result import Result
from kanade_watchdog.model import exitcodes
from kanade_watchdog.model.fieldvalues import Items, list_change, list_diff
from kanade_watchdog.model.printable import escape, key, quote
from kanade_watchdog.model.resources import Kind, Resource, kind_word

if TYPE_CHECKING:
    from kanade_watchdog.core.outcome import Outcome

JSON_FORMAT = 1

Undeclared = tuple[Kind, str]  # a stream on the broker that no declared resource is


# --- values and changes -----------------------------------------------------------------


def value_text(field_name: str, value: Any) -> str:
    """A value as diffs show it. `plan.show` writes quantities the way the config
    does; text is quoted here, not there, so that every diff quotes it alike."""
    if value is None:
        return "unset"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, tuple | list):
        if field_name in ("placement", "metadata") and all(
            isinstance(item, tuple) and len(item) == 2 for item in value
        ):
            return "{" + ", ".join(f"{key(str(k))}={value_text(k, v)}" for k, v in value) + "}"
        return "[" + ", ".join(value_text(field_name, v) for v in value) + "]"
    return escape(show(field_name, value))


def change_text(change: Change) -> str:
    if isinstance(change.desired, Items):  # a list owned as a whole: what it gains and loses
        return f"{change.field}: " + list_change(
            change.current, change.desired, lambda v: value_text(change.field, v)
        )
    current = value_text(change.field, change.current)
    desired = value_text(change.field, change.desired)
    return f"{change.field}: {current} -> {desired}"


def _change_json(change: Change) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    out = {
        "field": change.field,
        "current": plain(change.current),
        "desired": plain(change.desired),
        "current_text": value_text(change.field, change.current),
        "desired_text": value_text(change.field, change.desired),
    }
    if isinstance(change.desired, Items):
        added, removed = list_diff(change.current, change.desired)
        out.update(added=[plain(v) for v in added], removed=[plain(v) for v in removed])
    return out


# --- data at stake, before and after -----------------------------------------------------

# How the planner words an effect (future tense) -> what apply says once the
# write went through: (planner's phrase, what replaces it, what the line is).
_PAST_TENSE = (
    (
        "; nothing is lost (discard new): new writes would be refused",
        "",
        "new writes are now refused",
    ),
    ("; new writes would be refused", "", "new writes are now refused"),
    (" and would be discarded", "", "data discarded"),
    (" would be discarded", "", "data discarded"),
    (" would expire at once", " expired at once", "data discarded"),
    (" would be dropped", " dropped", "data discarded"),
)


def applied_effect(stake: Stake) -> str:
    """What an at-stake effect became once the update was written: the data
    discarded (past tense), or new writes now refused, where nothing was lost.
    The one place this wording lives."""
    text = stake.text
    for phrase, replacement, what in _PAST_TENSE:
        if phrase in text:
            body = text.replace(phrase, replacement, 1)
            if what == "data discarded":
                body = body.replace(" stored is over ", " stored was over ", 1)
                body = body.replace(" messages are over ", " messages were over ", 1)
            return f"{what}: {body}"
    if stake.loses_data:
        return f"data discarded: {text}"
    return f"stored data affected by the update: {text}"


# --- plan and apply -----------------------------------------------------------------------


def decision_json(d: Decision) -> dict[str, Any]:
    return {
        "kind": str(d.resource.kind),
        "name": d.resource.name,
        "stream": d.resource.stream,
        "action": str(d.action),
        "changes": [_change_json(c) for c in d.changes],
        "reason": d.reason,
        "at_stake": list(d.at_stake),
        "warnings": list(d.warnings),
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
    if d.action is Action.IN_SYNC and not verbose and not d.warnings:
        return []
    head = f"{_MARK[d.action]} {kind_word(d.resource.kind)} {d.resource.name}: {d.action}"
    if d.reason:
        head += f" ({d.reason})"
    lines = [head]
    lines += [f"    {change_text(c)}" for c in d.changes]
    lines += [f"    WARNING data at stake: {s}" for s in d.at_stake]
    lines += [f"    WARNING {escape(w)}" for w in d.warnings]
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


def plan_footer(
    decisions: Sequence[Decision], *, config: str, undeclared: Sequence[Undeclared] = ()
) -> str:
    """The last line of `plan`: the summary and the file it was planned from."""
    extra = f"; {len(undeclared)} not declared" if undeclared else ""
    return f"{plan_summary(decisions)}{extra} (config {config})"


def undeclared_lines(undeclared: Sequence[Undeclared]) -> list[str]:
    """What the broker holds that the file does not declare: reported, never touched."""
    return [f"? {kind_word(kind)} {escape(name)}: not declared" for kind, name in undeclared]


def undeclared_json(undeclared: Sequence[Undeclared]) -> list[dict[str, str]]:
    return [{"kind": str(kind), "name": name} for kind, name in undeclared]


def outcome_line(o: Outcome) -> str:
    d = o.decision
    text = f"{kind_word(d.resource.kind)} {d.resource.name}: {o.result}"
    if o.result is Result.UPDATED:
        text += " (" + "; ".join(change_text(c) for c in d.changes) + ")"
    if o.result in (Result.BLOCKED, Result.NEWER_SPEC):
        text += f" ({d.reason})"
    if o.error:
        text += f": {o.error}"
    return text


def outcome_lines(o: Outcome, *, verbose: bool = False) -> list[str]:
    """What `apply` prints for one resource. Effects on stored data are told
    in the past tense, and only when the update was written."""
    lines = []
    if o.decision.action is not Action.IN_SYNC or verbose:
        lines.append(outcome_line(o))
    if o.result is Result.UPDATED:
        lines += [f"    WARNING {applied_effect(s)}" for s in o.decision.stakes]
    return lines


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


def counted(n: int, word: str) -> str:
    """`1 request`, `2 requests`."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def elapsed_text(seconds: float) -> str:
    """`5 ms`, `1.2 s`, `75 s`."""
    if seconds < 0.001:
        return "<1 ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s"


def apply_footer(
    outcomes: Sequence[Outcome], *, requests: Mapping[str, int], seconds: float, config: str
) -> str:
    """The last line of `apply`: results, cost, and the file it applied."""
    total = sum(requests.values())
    return (
        f"{apply_summary(outcomes)} ({counted(total, 'request')}, {elapsed_text(seconds)}; "
        f"config {config})"
    )


def request_counts(counts: Mapping[str, int]) -> dict[str, int]:
    return {"total": sum(counts.values()), **dict(sorted(counts.items()))}


def report_json(
    *,
    in_sync: bool,
    summary: str,
    resources: list[dict[str, Any]],
    requests: Mapping[str, int],
    seconds: float,
    config: str,
    exit_code: int,
    undeclared: Sequence[Undeclared] = (),
) -> str:
    """The stable `--json` document of plan and apply."""
    return json.dumps(
        {
            "format": JSON_FORMAT,
            "config": config,
            "in_sync": in_sync,
            "summary": summary,
            "resources": resources,
            "undeclared": undeclared_json(undeclared),
            "requests": request_counts(requests),
            "seconds": round(seconds, 4),
            "error": "",
            "exit_code": exit_code,
        },
        indent=2,
    )


def validate_json(resources: Sequence[Resource], *, config: str) -> str:
    """`validate --json` on a valid file: what it declares."""
    return json.dumps(
        {
            "format": JSON_FORMAT,
            "config": config,
            "valid": True,
            "resources": [
                {"kind": str(r.kind), "name": r.name, "stream": r.stream} for r in resources
            ],
            "error": "",
            "problems": [],
            "exit_code": exitcodes.OK,
        },
        indent=2,
    )


def failure_json(*, config: str, problems: Sequence[str], exit_code: int, **extra: Any) -> str:
    """What `--json` prints when a command cannot do its work: `error` is the
    first line it wrote on stderr, `problems` every one (all config problems)."""
    return json.dumps(
        {
            "format": JSON_FORMAT,
            "config": config,
            **extra,
            "error": problems[0] if problems else "",
            "problems": list(problems),
            "exit_code": exit_code,
        },
        indent=2,
    )
