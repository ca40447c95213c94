"""`report.status.StatusBoard` keeps its groups as entries change, so the
STATUS line costs what it names, not a walk over every declared resource.

Checked against the board's former rendering, which walked every entry on
each call: for any sequence of pass reports and reloads, the kept groups
give the same line, the same missing list and the same readiness.
"""

from __future__ import annotations

import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kanade_watchdog.core.plan import Action
from kanade_watchdog.core.reports import Done, Failed
from kanade_watchdog.core.result import Result
from kanade_watchdog.model.errors import BrokerUnavailable
from kanade_watchdog.model.events import Trigger
from kanade_watchdog.model.resources import Kind, Resource
from kanade_watchdog.report import status
from kanade_watchdog.report.status import StatusBoard
from tests.test_reporters import done, report

NAMES = [f"S{i}" for i in range(6)]
RESOURCES = {
    n: Resource(kind=Kind.STREAM, name=n, declared={"subjects": (f"{n}.>",)}) for n in NAMES
}

DONE = {  # result -> the action a decision behind it has
    Result.CREATED: Action.CREATE,
    Result.UPDATED: Action.UPDATE,
    Result.IN_SYNC: Action.IN_SYNC,
    Result.BLOCKED: Action.BLOCKED,
    Result.NEWER_SPEC: Action.NEWER_SPEC,
}


def walked_line(board: StatusBoard) -> str:
    """The line as the board rendered it before it kept groups: one walk over
    every entry per call."""
    if board.broker_text:
        return board.broker_text
    entries = list(board._entries.values())
    counts = dict.fromkeys(Result, 0)
    grouped: dict[Result, list[str]] = {r: [] for r in status._REASONED}
    missing: list[str] = []
    for e in entries:
        if e.result is not None:
            counts[e.result] += 1
            if e.result in grouped:
                grouped[e.result].append(e.label)
        if not e.present:
            missing.append(e.label)
    ok = counts[Result.IN_SYNC] + counts[Result.CREATED] + counts[Result.UPDATED]
    parts = [f"{ok}/{len(entries)} in sync"]
    for result, words in (
        (Result.BLOCKED, "blocked"),
        (Result.NEWER_SPEC, "newer spec present"),
        (Result.FAILED, "failing"),
    ):
        if grouped[result]:
            parts.append(f"{len(grouped[result])} {words}: {status._few(grouped[result])}")
    if missing and board.last_pass is not None:
        parts.append(f"{len(missing)} missing: {status._few(missing)}")
    too_new = [
        f"{e.label} needs {', '.join(e.decision.too_new)}"
        for e in entries
        if e.decision is not None and e.decision.too_new
    ]
    if too_new:
        server = f"nats-server {board.server_version}" if board.server_version else "the server"
        parts.append(f"{server} too old: {status._few(too_new)}")
    if board.last_heal:
        label, at = board.last_heal
        parts.append(f"last heal {label} {time.strftime('%H:%M:%S', time.localtime(at))}")
    return ", ".join(parts)


step = st.one_of(
    st.tuples(
        st.just("done"),
        st.sampled_from(NAMES),
        st.sampled_from(sorted(DONE)),
        st.sampled_from([None, True, False]),
        st.booleans(),
    ),
    st.tuples(st.just("failed"), st.sampled_from(NAMES), st.sampled_from([None, True, False])),
    st.tuples(st.just("reload"), st.permutations(NAMES), st.integers(1, len(NAMES))),
)


DECISIONS: dict[tuple[Any, ...], Done] = {}


def apply(board: StatusBoard, item: tuple[Any, ...]) -> None:
    if item[0] == "done":
        _, name, result, present, too_new = item
        extra: dict[str, Any] = {"present": present, "reason": f"why {name}"}
        if too_new:
            extra["too_new"] = ("allow_msg_ttl (nats-server 2.11.0)",)
        # The same decision object again, as a resync hands back an unchanged
        # in-sync resource's (`daemon.memo`), or a new one.
        key = (name, result, present, too_new)
        made = DECISIONS.setdefault(key, done(result, DONE[result], res=RESOURCES[name], **extra))
        board.pass_done(report(done=(made,)))
    elif item[0] == "failed":
        _, name, present = item
        failure = Failed(RESOURCES[name], BrokerUnavailable("down"), Trigger.RETRY, present)
        board.pass_done(report(failed=(failure,)))
    else:
        _, order, keep = item
        board.declared([RESOURCES[n] for n in order[:keep]])


def expected(
    model: dict[str, tuple[Result | None, bool]], item: tuple[Any, ...]
) -> dict[str, tuple[Result | None, bool]]:
    """Each resource's (result, present) after `item`, by the board's rules."""
    if item[0] == "reload":
        _, order, keep = item
        return {n: model.get(n, (None, False)) for n in order[:keep]}
    name = item[1]
    if name not in model:  # dropped by a reload: the report is ignored
        return model
    if item[0] == "done":
        _, _, result, present, _ = item
        writes = result in (Result.CREATED, Result.UPDATED)
        if present is None:  # derived from the decision's action
            present = result not in (Result.CREATED, Result.BLOCKED)  # no changes: absent
        return {**model, name: (result, bool(present) or writes)}
    present = item[2]
    return {**model, name: (Result.FAILED, model[name][1] if present is None else present)}


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=30))
def test_the_kept_groups_say_what_a_walk_over_every_entry_says(steps: list[Any]) -> None:
    """Whatever reports and reloads came, the line, the missing list and
    readiness are those of a walk over every entry."""
    board = StatusBoard([RESOURCES[n] for n in NAMES])
    model: dict[str, tuple[Result | None, bool]] = dict.fromkeys(NAMES, (None, False))
    for item in steps:
        apply(board, item)
        model = expected(model, item)
        assert {n: (e.result, e.present) for n, e in board._entries.items()} == model
        walked_missing = [e.label for e in board._entries.values() if not e.present]
        assert board.missing() == walked_missing
        assert board.all_present() is (not walked_missing)


def test_the_line_does_not_walk_the_entries_after_a_heal() -> None:
    """After the first pass, rendering the line reads no entry it does not
    name: at 10,000 declared resources a heal's partial pass would otherwise
    pay a walk over all of them."""
    board = StatusBoard([RESOURCES[n] for n in NAMES])
    for n in NAMES:
        board.pass_done(report(done=(done(Result.IN_SYNC, Action.IN_SYNC, res=RESOURCES[n]),)))

    class Untouchable(dict[str, Any]):
        def values(self) -> Any:
            raise AssertionError("line() walked every entry")

        def __iter__(self) -> Any:
            raise AssertionError("line() walked every entry")

    board._entries = Untouchable(board._entries)
    board.pass_done(report(done=(done(Result.CREATED, Action.CREATE, res=RESOURCES["S2"]),)))
    assert board.line().startswith("6/6 in sync, last heal S2 ")
